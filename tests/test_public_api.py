"""The public surface: every error class from ``kvinfo``, one naming pattern for codec
classes (old names deprecated for one release), package ``__all__`` lists that resolve."""

from __future__ import annotations

import importlib
import inspect
import warnings

import pytest

import kvinfo
import kvinfo.errors as errors


def test_every_error_class_is_importable_from_kvinfo():
    for name in errors.__all__:
        assert getattr(kvinfo, name) is getattr(errors, name), name
        assert name in kvinfo.__all__, name
    for name in ("CudaUnavailableError", "ResultsSchemaError", "OutputPathError"):
        assert name in errors.__all__


def test_errors_all_lists_every_error_class_and_each_is_a_value_error():
    defined = {n for n, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, Exception)
               and obj.__module__ == errors.__name__}
    assert defined == set(errors.__all__)
    for name in defined:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.KvinfoError) and issubclass(cls, ValueError), name


@pytest.mark.parametrize("package", ["kvinfo", "kvinfo.analysis", "kvinfo.codecs",
                                     "kvinfo.codecs.quant", "kvinfo.dumps", "kvinfo.kernels",
                                     "kvinfo.kernels.gpu", "kvinfo.testing"])
def test_package_all_resolves_and_has_no_private_names(package):
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.__all__ names missing {name}"
        assert not name.startswith("_") or name == "__version__", f"{package}: {name}"


def test_analysis_exports_no_internals():
    import kvinfo.analysis as analysis

    assert not {"bit_view", "to_float64", "water_level"} & set(analysis.__all__)
    # still reachable from their modules
    from kvinfo.analysis._rd import water_level  # noqa: F401
    from kvinfo.analysis._stats import bit_view, to_float64  # noqa: F401


RENAMED = [
    ("kvinfo.codecs.rans", "Rans", "RansCodec", "rans"),
    ("kvinfo.codecs.huffman", "Huffman", "HuffmanCodec", "huffman"),
    ("kvinfo.codecs.arith", "Arith", "ArithCodec", "arith"),
    ("kvinfo.codecs.constriction_peers", "ConstrictionAns", "ConstrictionAnsCodec",
     "constriction-ans"),
    ("kvinfo.codecs.constriction_peers", "ConstrictionRange", "ConstrictionRangeCodec",
     "constriction-range"),
]


def test_every_registered_codec_class_is_named_xxx_codec():
    from kvinfo.codecs import codec_registry

    bad = {cid: cls.__name__ for cid, cls in codec_registry.items()
           if not cls.__name__.endswith("Codec")}
    assert not bad


@pytest.mark.parametrize("module, old, new, codec_id", RENAMED, ids=[r[1] for r in RENAMED])
def test_old_codec_class_names_are_deprecated_aliases(module, old, new, codec_id):
    from kvinfo.codecs import codec_registry

    mod = importlib.import_module(module)
    cls = getattr(mod, new)
    assert codec_registry[codec_id] is cls and new in mod.__all__ and old not in mod.__all__
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} is deprecated.*{new}"):
        alias = getattr(mod, old)
    assert alias is cls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ns: dict = {}
        with pytest.raises(DeprecationWarning):
            exec(f"from {module} import {old}", ns)
    with pytest.raises(AttributeError, match="no attribute"):
        mod.NoSuchCodec  # noqa: B018


def test_gpu_prepare_and_decode_of_a_codec_are_deprecated_shims():
    import numpy as np

    from kvinfo.codecs import get_codec
    from kvinfo.errors import CodecConfigError
    from kvinfo.kernels import gpu

    codec = get_codec({"id": "ecsq"})  # no CUDA decoder: refused on the host, GPU or not
    data = codec.encode(np.ones((4, 8), np.float32))
    for fn in (gpu.prepare, gpu.decode):
        with pytest.warns(DeprecationWarning, match="deprecated; use codec"):
            with pytest.raises(CodecConfigError, match="no CUDA decoder for codec 'ecsq'"):
                fn(codec, data)
    assert "prepare" not in gpu.__all__ and "prepare_rans" in gpu.__all__
