"""Where the Keras backend of this process computes: its accelerator, if any.

Each backend's own library is imported inside its branch only, so this runs on any backend
without the others installed.
"""

import resource

import keras


def accelerated():
    """Whether the backend computes on an accelerator (a GPU) rather than the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def peak_memory():
    """(bytes, what): the accelerator's peak allocation, else the process's peak RSS."""
    if accelerated():
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            device = jax.local_devices()[0]
            return device.memory_stats()["peak_bytes_in_use"], f"{device.device_kind} peak"
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"], "GPU:0 peak"
        import torch

        return torch.cuda.max_memory_allocated(), f"{torch.cuda.get_device_name()} peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"
