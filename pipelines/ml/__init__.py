"""Machine learning on gold: tensors from a pinned snapshot (`inputs`, `tensors`), the Keras
`model`, `training` with Horovod, the MLlib `baselines`, `evaluation`, batch `scoring`, the
`results` tables, the model `registry`, and the nightly `candidate` (train, measure, register)."""
