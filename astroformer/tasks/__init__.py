"""Tasks: seeded NumPy generators of training batches, and their metrics.

Synthetic recall tasks (`MQAR`, `InductionHeads`, `SelectiveCopying`, `Copying`) scored by `accuracy`, and
character-level language modelling (`CharLM` over a `CharCorpus`) scored by `bits_per_char`. Every task
returns `Batch`es in next-token-prediction form from `task.batch(split, batch_size, seed=...)`.
"""

from ._base import AbstractTask as AbstractTask, Batch as Batch
from ._charlm import CharCorpus as CharCorpus, CharLM as CharLM
from ._copying import Copying as Copying
from ._induction import InductionHeads as InductionHeads
from ._metrics import accuracy as accuracy, bits_per_char as bits_per_char
from ._mqar import MQAR as MQAR
from ._registry import TASK_NAMES as TASK_NAMES, get_task as get_task
from ._selective_copying import SelectiveCopying as SelectiveCopying
