"""Training transformers whose attention is softmax, linear or a neuron–astrocyte network.

`Transformer` (the model), `TrainConfig` (a run's configuration), `train` / `resume_run` (the loop, with
metrics, checkpoints and exact resumption), `evaluate`, `load_run`, `sample` / `sample_text`, and the
data-parallel helpers `make_mesh`, `replicate`, `shard_batch`. The command line is `astroformer train`,
`astroformer sample` and `astroformer eval`.
"""

from ._checkpoint import (
    CheckpointError as CheckpointError,
)
from ._checkpoint import (
    load_checkpoint as load_checkpoint,
)
from ._checkpoint import (
    save_checkpoint as save_checkpoint,
)
from ._config import TrainConfig as TrainConfig
from ._memory import MemoryEstimateError as MemoryEstimateError
from ._memory import estimate_memory as estimate_memory
from ._model import Block as Block
from ._model import Transformer as Transformer
from ._model import trainable_filter as trainable_filter
from ._parallel import make_mesh as make_mesh
from ._parallel import replicate as replicate
from ._parallel import shard_batch as shard_batch
from ._presets import TASK_PRESETS as TASK_PRESETS
from ._presets import preset_config as preset_config
from ._sample import sample as sample
from ._sample import sample_text as sample_text
from ._signals import Interrupted as Interrupted
from ._train import (
    TrainResult as TrainResult,
)
from ._train import (
    build_model as build_model,
)
from ._train import (
    build_task as build_task,
)
from ._train import (
    data_seed as data_seed,
)
from ._train import (
    evaluate as evaluate,
)
from ._train import (
    load_run as load_run,
)
from ._train import (
    loss_fn as loss_fn,
)
from ._train import (
    make_eval_step as make_eval_step,
)
from ._train import (
    make_optimizer as make_optimizer,
)
from ._train import (
    make_train_step as make_train_step,
)
from ._train import (
    read_metrics as read_metrics,
)
from ._train import (
    resume_run as resume_run,
)
from ._train import (
    train as train,
)
