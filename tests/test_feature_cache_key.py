"""The feature-cache key follows the CLIP weights' content, not only their path."""
from federated.feature_cache import cache_key, weights_fingerprint


def test_replacing_a_weights_file_changes_the_cache_key(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first weights")
    first = cache_key([], "tiny", weights_fingerprint(str(path)), "tfm", 8, 0)
    path.write_bytes(b"other weights!")
    second = cache_key([], "tiny", weights_fingerprint(str(path)), "tfm", 8, 0)
    assert first != second
    assert weights_fingerprint("openai") == "openai"
