"""The reference model server (`mark worker`): KServe v2 with server-side batch execution."""

from mark.apps.worker.loaders import ServedModel, default_name, load_model
from mark.apps.worker.server import ModelRunner, build_app

__all__ = ["ServedModel", "ModelRunner", "build_app", "default_name", "load_model"]
