"""The reference model server (`mark worker`): KServe v2 with server-side batch execution and
a many-model cache (memory, local disk, the model store) behind the model repository API."""

from mark.apps.worker.cache import ModelCache
from mark.apps.worker.loaders import ServedModel, default_name, load_model
from mark.apps.worker.runner import ModelRunner
from mark.apps.worker.server import build_app

__all__ = ["ModelCache", "ServedModel", "ModelRunner", "build_app", "default_name", "load_model"]
