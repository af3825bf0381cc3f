"""One module per framework (tf.data, Keras, torch, JAX); each imports its framework and is imported only when used."""
