"""What users run a model with: the CTranslate2 export (`export`), transcription on the app's
backends (`inference`), the language model's continuation (`continuation`) and the Gradio app
(`app`, with its request limits `limits`, its fair queue `scheduler` and its own upload folder
`uploads`). Nothing of training, the search or the feature pipeline.

May import: `common`, `audio`, `models`.
"""
