import pytest

from seguncert.config import load_config
from seguncert.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  arch: segnet_basic\ntrain:\n  epochs: 3\n")
    cfg = load_config(p, ["optim.lr=0.01", "data.size=[180,240]", "model.encoder_weights=null"])
    assert cfg.model.arch == "segnet_basic"
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == 0.01
    assert cfg.data.size == [180, 240]
    assert cfg.model.encoder_weights is None


def test_unknown_key_names_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  dropuot: central\n")
    with pytest.raises(ConfigError, match=r"model\.dropuot.*'dropout'"):
        load_config(p)


def test_unknown_section_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown config section 'modle'"):
        load_config(None, ["modle.arch=unet"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(None, ["model.dropout=middle"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
