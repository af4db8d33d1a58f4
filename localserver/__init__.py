"""The local endpoint server behind `serve.py`: RunPod's endpoint API in front of the worker's handler."""
