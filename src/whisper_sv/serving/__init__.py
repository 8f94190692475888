"""What users run a model with: the CTranslate2 export (`export`), transcription on the app's
backends (`inference`), the language model's continuation (`continuation`) and the Gradio app
(`app`). Nothing of training, the search or the feature pipeline.

May import: `common`, `audio`, `models`.
"""
