"""Training transformers whose attention is softmax, linear or a neuron–astrocyte network.

`Transformer` (the model), `TrainConfig` (a run's configuration), `train` / `resume_run` (the loop, with
metrics, checkpoints and exact resumption), `evaluate`, `load_run`, `sample` / `sample_text`, and the
data-parallel helpers `make_mesh`, `replicate`, `shard_batch`. The command line is `astroformer train`,
`astroformer sample` and `astroformer eval`.
"""

from ._checkpoint import (
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from ._config import TrainConfig as TrainConfig
from ._memory import MemoryEstimateError as MemoryEstimateError, estimate_memory as estimate_memory
from ._model import Block as Block, Transformer as Transformer, trainable_filter as trainable_filter
from ._presets import TASK_PRESETS as TASK_PRESETS, preset_config as preset_config
from ._parallel import make_mesh as make_mesh, replicate as replicate, shard_batch as shard_batch
from ._sample import sample as sample, sample_text as sample_text
from ._signals import Interrupted as Interrupted
from ._train import (
    TrainResult as TrainResult,
    build_model as build_model,
    build_task as build_task,
    data_seed as data_seed,
    evaluate as evaluate,
    load_run as load_run,
    loss_fn as loss_fn,
    make_eval_step as make_eval_step,
    make_optimizer as make_optimizer,
    make_train_step as make_train_step,
    skipped_in_a_row as skipped_in_a_row,
    read_metrics as read_metrics,
    resume_run as resume_run,
    train as train,
)
