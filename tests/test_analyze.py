"""tools/analyze.py: the analysis command line writes its table as JSON and CSV."""

import json

from test_learned import fake_fashion_mnist, tiny_model

from models import save_model
from tools.analyze import main


def test_cli_writes_json_and_csv(tmp_path, capsys):
    folder = tmp_path / "data"
    fake_fashion_mnist(folder, 3)
    save_model(tiny_model("dense()"), tmp_path / "m")
    out = tmp_path / "out"
    rc = main(
        [
            "--model",
            str(tmp_path / "m"),
            "--layout",
            "fixed",
            "--images",
            "2",
            "--data",
            f"fashion-mnist:{folder}",
            "--out",
            str(out),
            "--search",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "learned attention vs fixed(l=28, c=2)" in text
    result = json.loads((out / "m_vs_fixed.json").read_text())
    assert len(result["heads"]) == 4 and result["images"] == 2 and result["search"]
    assert (out / "m_vs_fixed.csv").read_text().startswith("layer,head,layout")
    assert main(["--model", str(tmp_path / "nope")]) == 2
    assert main(["--model", str(tmp_path / "m"), "--layout", "strided(l=0)"]) == 2
