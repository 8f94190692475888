"""Sound in, numbers out: the audio loader and Whisper's audio constants (`io`), the log-mel and its
smoothing (`logmel`, `logmel_figures`), acoustic realism (`realism`), non-speech signals
(`nonspeech`) and long recordings stitched from clips with exact boundaries (`longform`).

May import: `common`.
"""
