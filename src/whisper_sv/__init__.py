"""whisper_sv: fine-tune OpenAI Whisper on Swedish (or any language, by configuration) without falling over.

One subpackage per stage, over the shared ones, in the order data flows:

    common, audio          plumbing; sound in, numbers out
    models, data           Whisper models; corpora and feature stores (what stages hand each other)
    synth -> features -> training -> serving -> evaluation -> search
    demo, cli              the whole loop (`make demo`); the `whisper-sv` command

Each subpackage's docstring says its job and what it may import; tests/test_layering.py holds them
to it. Each stage has one library function and one CLI subcommand.
"""

__version__ = "0.1.0"
