"""TensorFlow-op building blocks of ``to_tf_dataset(native=True)`` (:mod:`npyfeed.tf_native`)."""
