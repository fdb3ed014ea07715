"""PRR-FL, Personalized Retrogress-Resilient FL (Chen et al., MICCAI 2021).

* `pfa`: Progressive Fourier Aggregation of the deputy models (server side, pure functions).
* `det`: Deputy-Enhanced Transfer between the personalized and the deputy model (client side).
* `networks`: the slim VGG16 with BatchNorm of the original code.
* `metrics`: accuracy, macro-F1 and one-vs-rest macro-AUC without scikit-learn.
* `ham10000`, `dataset`: HAM10000 metadata reading, lesion-level splits, and the per-client CSV dataset.
"""
