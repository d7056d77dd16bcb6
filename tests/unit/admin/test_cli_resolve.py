"""Where the CLI finds the admin API and its token."""

from __future__ import annotations

import json

import pytest
import typer

from colony.cli.provisioning import DEFAULT_API, resolve


def test_token_and_api_default_to_what_colony_up_wrote(tmp_path):
    (tmp_path / "admin.token").write_text("col_x_y\n")
    (tmp_path / "cluster.json").write_text(json.dumps({"admin_api": ["http://127.0.0.1:9999"]}))
    target = resolve(None, None, None, tmp_path)
    assert (target.api, target.token) == ("http://127.0.0.1:9999", "col_x_y")


def test_explicit_values_win_and_missing_token_is_a_clear_error(tmp_path):
    assert resolve("http://h:1/", "tok", None, tmp_path).api == "http://h:1"
    assert resolve(None, "tok", None, tmp_path).api == DEFAULT_API
    with pytest.raises(typer.Exit):
        resolve(None, None, None, tmp_path)
