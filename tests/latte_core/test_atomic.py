"""latte_core/atomic.py's strict JSON and the output-folder helper every command uses."""
import json
import math

import pytest

from latte_core.atomic import finite_or_none, make_output_dir, strict_json_line, write_json_atomically
from latte_core.errors import UserError


def test_a_non_finite_value_is_never_written_as_json(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(ValueError):
        write_json_atomically(str(path), {"loss": math.nan})
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing published, no staging left
    figures = {"fd": math.inf, "rows": [1.0, -math.inf, {"x": math.nan}], "n": 3, "name": "a"}
    assert finite_or_none(figures) == {"fd": None, "rows": [1.0, None, {"x": None}], "n": 3, "name": "a"}

    def refuse(constant):
        raise ValueError(constant)
    assert json.loads(strict_json_line(figures), parse_constant=refuse)["fd"] is None


def test_make_output_dir_names_the_path_and_the_reason(tmp_path):
    made = make_output_dir(str(tmp_path / "a" / "b"))
    assert made == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    assert make_output_dir(made) == made  # an existing folder is fine
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for create in (True, False):
        with pytest.raises(UserError, match=rf"output_path {blocker}/run/x: cannot write there \(Not a directory\)"):
            make_output_dir(str(blocker / "run" / "x"), "output_path", create=create)
    with pytest.raises(UserError, match="cannot write there"):
        make_output_dir(str(blocker), create=False)
    assert blocker.read_text() == "x"
    assert make_output_dir(str(tmp_path / "new" / "c"), create=False) and not (tmp_path / "new").exists()
