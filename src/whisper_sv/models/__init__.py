"""Whisper models as the stages load, decode and convert them: model specs (Hub id, folder,
`packaged:whisper-base`; `specs`), the packaged base and its CTranslate2 conversion (`packaged`,
`ct2_*`), LoRA (`lora`), the shared decode helpers (`decoding`) and the encoder window a model was
trained on (`encoder_window`).

May import: `common`, `audio`.
"""
