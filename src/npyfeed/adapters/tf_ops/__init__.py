"""TensorFlow-op building blocks of ``to_tf_dataset(native=True)`` (:mod:`npyfeed.adapters.tf_native`)."""
