"""The daemon's stages as small functions over frozen records, one module per stage; ``daemon scan`` and
``daemon run`` run the same ones, on the threads of ``daemon.stream``:

    fetch (``fetch``) → decode (``decode``) → regions (``regions``) → preprocess (``engines.preprocess``),
    run for one job by ``prepare.prepare`` in the prepare workers (``daemon.stream.prepare``);
    batch (``daemon.stream.batching``) → infer (``infer``) → judge (``judge``), in the batching thread;
    store (``daemon.stream.persist``), in the persist thread.

Every per-item failure becomes that item's error verdict; nothing here lets one bad file stop a batch.
Media over the judge's ``MediaBudget`` is refused from its header before decoding; large media is decoded
downscaled to the frame budget and searched for faces at ``detect_max_side`` (the memory ceiling of one job is
written down in ``engines.budgets``). The names below are the stages' public face.
"""

from deepsift.daemon.pipeline.decode import decode, decoder_note
from deepsift.daemon.pipeline.fetch import fetch
from deepsift.daemon.pipeline.infer import infer
from deepsift.daemon.pipeline.judge import engine_identity, verdict
from deepsift.daemon.pipeline.prepare import prepare
from deepsift.daemon.pipeline.records import JudgeConfig, MediaJob, Outcome, PreparedMedia, Region
from deepsift.daemon.pipeline.regions import find_regions

__all__ = [
    "JudgeConfig",
    "MediaJob",
    "Outcome",
    "PreparedMedia",
    "Region",
    "decode",
    "decoder_note",
    "engine_identity",
    "fetch",
    "find_regions",
    "infer",
    "prepare",
    "verdict",
]
