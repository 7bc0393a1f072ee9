"""Training side of the delivery system: data, validation, the model, train / retrain / evaluate.

Modules (one job each): ``constants`` (data set names, split/batch sizes, defaults),
``datasets`` (base data sets, frozen partition, fingerprints),
``batches`` (incoming ``.npz`` batches: read, write, make), ``s3`` (reading/writing batches on
S3), ``validation`` (checks that run before any training), ``model`` (the CNN and its tf.data
pipeline), ``metrics`` (accuracy/loss/confusion on plain arrays), ``export`` (TF-Serving
SavedModel, golden smoke set, normalized signature), ``plots``, ``tracking`` (MLflow run
helpers), ``train`` (train / retrain and register), ``evaluate`` (any registered version on the
frozen held-out set), ``calibrate`` (how much good/bad batches move accuracy).

TensorFlow and MLflow are imported inside the functions that need them.
"""
