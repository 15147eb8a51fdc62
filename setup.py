from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

# Export (TFLite, ONNX) and the runtimes that run the exported files; TensorFlow is also the
# default Keras backend. Training and evaluation need none of it.
export = [
    "tensorflow>=2.21,<2.22", "ai-edge-litert>=2.3", "tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.20",
    # TFLite metadata writer (inside every exported .tflite) and the ImageSegmenter the export
    # tests run; 1.x needs no protobuf, so it coexists with TensorFlow 2.21
    "mediapipe>=1.2.3",
]

setup(
    name="itnet-keras",
    version="0.1.0",
    description="ItNet: iterative neural networks for anytime semantic segmentation, in Keras 3",
    packages=find_packages(include=["itnet_keras", "itnet_keras.*"]),
    python_requires=">=3.11",  # keras 3.15 and jax 0.10 need it
    install_requires=requirements,
    extras_require={
        "export": export,
        # Training on an NVIDIA GPU (KERAS_BACKEND=jax): 0.10.2 is tested here on CPU, 0.11.2 is on the GPU machine.
        "jax-cuda": ["jax[cuda12]>=0.10.2,<0.12"],
        # Training on an NVIDIA GPU with the TensorFlow backend.
        "tensorflow-cuda": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "dev": [
            *export,
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suite runs on two worker processes (pytest.ini)
            "jax[cpu]>=0.4.30",  # the JAX-backend test trains the tiny preset under KERAS_BACKEND=jax
            "jupytext>=1.16",  # notebooks are kept as paired .py sources
            "nbclient>=0.10",  # CI executes every notebook in smoke mode
            "ipykernel>=6",
            "tensorboard>=2.20",  # a test reads the event files back with tensorboard's reader
        ]
    },
)
