"""Benchmarks of a wav2vec 2.0 training update against transformers and fairseq, in one run.

    python scripts/bench.py train    [--quick | --full] [--precision fp32 bf16]
    python scripts/bench.py mask     # span mask + negatives, B=8 T=781, vs transformers' NumPy
    python scripts/bench.py memory   # peak RSS of one BASE update, fresh process per row
    python scripts/bench.py scaling  [--full]   # audio-s/s against utterance length
    python scripts/bench.py profile  # top ops of one BASE update; host syncs in the forward
    python scripts/bench.py all      [--quick | --full]   # train, mask, memory, scaling
    python scripts/bench.py data     [--seconds 1800] [--workers 0 1 2]
    python scripts/bench.py shards   [--seconds 600] [--workers 0 1 2]   # tar shards vs files, opens/seeks
    python scripts/bench.py fsdp-plan [--sizes 1B 2B 7B]   # on paper: memory per GPU, DDP vs FSDP2, ckpt
    python scripts/bench.py fsdp-memory [--sizes BASE LARGE]   # measured: memory per gloo rank, DDP vs FSDP2
    python scripts/bench.py align    --model MODEL --prompts test.tsv [--minutes 1 60]   # forced alignment
    python scripts/bench.py gpu      # the GPU check: one JSON object (< 5 min; without CUDA: tiny on CPU)

Every model section runs one full training update of the BASE pretraining model (12 layers):
forward, loss, backward, Adam step, zero_grad. The peers get the same weights, the same audio,
the same time mask and (transformers) the same negatives, the same thread count, and run
alternately in one process: transformers' `Wav2Vec2ForPreTraining` with eager and with SDPA
attention (the faster one is the "best peer"), and fairseq 0.12.2's `Wav2Vec2Model` when an
interpreter with fairseq is given (`--fairseq-python`, or fairseq importable here). LayerDrop is
set to 0 so every update does the same work. Throughput is audio-seconds per second (median
of the timed updates); MFU is an analytical FLOP count (`model_flops`) per second over the
GEMM peak measured at the start of the same run. `--json PATH` writes one row per
measurement. Needs the `bench` extra (transformers).
"""

# The package is the top floor: it may import anything in wav2vec2, nothing imports it.
# One module per section (train, ctc, mask, memory, scaling, profiling, data, shards, fsdp_plan, fsdp_memory,
# align, gpu); common.py holds
# the environment line, timing protocol, FLOP count and GEMM peak, peak memory and result rows;
# updates.py builds the one BASE update each implementation runs (train, memory, scaling);
# fairseq_worker.py is the fairseq side and torchaudio_worker.py the torchaudio one, each run by
# path under another interpreter; align_data.py builds the recordings of `align`; cli.py parses
# the command line (`python -m wav2vec2.bench` or scripts/bench.py).
