"""ONNX -> engine per model size, in two halves that never meet at run time.

artifact.py (runtime): paths, manifest checks, which artifact to load; manifest.py: the
manifest's schema and differences; files.py: hashing and atomic writes; child.py: the one
child-process runner. build.py, worker.py, trt_build.py (offline): build an artifact,
imported by ``build-engine`` and ``doctor`` only. Import the module you need; this
package imports nothing, so loading an artifact never pulls in the build side.
"""
