"""edge-agent: an edge inference agent for NVIDIA Jetson (and any Linux box)."""

import glob

from setuptools import Extension, find_packages, setup

# The CPU's fast paths in C (agent/native/fastpath.c), loaded with ctypes: plain C, no Python
# or numpy headers, so any C compiler builds it (JetPack's GCC 7.5 included). Optional: where
# it does not build, the install goes on and the numpy paths run (agent/native/__init__.py).
# -ffp-contract=off: no fused multiply-add, so every operation rounds as the numpy reference's.
FASTPATH = Extension("agent.native._fastpath", sources=["agent/native/fastpath.c"], optional=True,
                     extra_compile_args=["-std=c99", "-O3", "-ffp-contract=off"])

setup(
    name="edge-agent",
    version="0.1.0",
    description="Real-time detection on Jetson, x86 GPUs and CPUs, published over MQTT",
    long_description=open("README.md").read() if glob.glob("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.6",
    packages=find_packages(include=["agent", "agent.*"]),
    package_data={"agent": ["schemas/*.json", "kernels/*.cu", "kernels/*.h", "fleet/*.jsonl.gz", "native/*.c"]},
    ext_modules=[FASTPATH],
    data_files=[
        ("share/edge-agent/models", glob.glob("models/*.onnx") + glob.glob("models/*.md")),
        ("share/edge-agent/systemd", glob.glob("systemd/*")),
    ],
    install_requires=[
        "numpy>=1.19",
        "click>=7.1",
        "PyYAML>=5.1",
        # paho-mqtt 2.x needs Python 3.7+; 1.6 is the last for JetPack 4's Python 3.6.
        'paho-mqtt>=1.6,<2; python_version < "3.7"',
        'paho-mqtt>=1.6,<3; python_version >= "3.7"',
        'dataclasses; python_version < "3.7"',
        # OpenCV is not required here on purpose: JetPack's system OpenCV has GStreamer
        # (CSI cameras), pip's opencv-python does not. Install the `cpu` extra off-Jetson.
        # Nor is scipy (the tracker's linear_sum_assignment): on a Jetson it is Ubuntu's
        # python3-scipy (scripts/install.sh), built against JetPack's numpy; elsewhere the
        # `cpu` extra brings it.
    ],
    extras_require={
        # scipy 1.5.4 is the last release for Python 3.6.
        "cpu": ["onnxruntime>=1.10", "opencv-python-headless>=4.1",
                'scipy>=1.5,<1.6; python_version < "3.7"', 'scipy>=1.5; python_version >= "3.7"'],
        "tracking": ['scipy>=1.5,<1.6; python_version < "3.7"', 'scipy>=1.5; python_version >= "3.7"'],
        "onnxruntime": ["onnxruntime>=1.10"],
        "opencv": ["opencv-python-headless>=4.1"],
        # Device.retain_primary_context (the backend) arrived in pycuda 2020.1; 2022.1 is the last for Python 3.6.
        "gpu": ['pycuda>=2020.1,<=2022.1; python_version < "3.7"', 'pycuda>=2020.1; python_version >= "3.7"'],
        # motmetrics: MOTA/IDF1 of the tracker (benchmarks/track_accuracy.py); 1.2.5 is the last for 3.6.
        "eval": ["faster-coco-eval>=1.3; python_version >= '3.7'", "pycocotools>=2.0",
                 'motmetrics==1.2.5; python_version < "3.7"', 'motmetrics>=1.2; python_version >= "3.7"'],
        "plot": ["matplotlib>=3.0"],
        # tensorrt-stubs is installed with --no-deps by scripts/setup.sh: its dependency
        # (the real TensorRT bindings) is what a CPU machine cannot have.
        # Jinja2: the tests render the Home Assistant discovery templates as Home Assistant does.
        "dev": ["pytest>=6", "jsonschema>=3", "vermin>=1.5", "mypy", "onnx>=1.8", "matplotlib>=3.0", "hypothesis",
                "Jinja2>=2.11"],
        "train": ["torch>=1.10", "onnx>=1.8"],
    },
    entry_points={"console_scripts": ["edge-agent=agent.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
