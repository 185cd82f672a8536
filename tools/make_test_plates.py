"""Write the issue-15 test plates in tests/data/plates/ (triplicate template, whole CPM).

    .venv/bin/python tools/make_test_plates.py      # rewrites tests/data/plates/*

Every plate uses ``config/layouts/triplicate_96.toml`` (lots in column triplets, concentrations by
row) with four lots: LOT-A at A1, REF-001 at A4, LOT-B at A7, LOT-C at A10. Counts (whole CPM, as most
counters print them) follow the simulator's model with fixed numbers: spontaneous 520, maximum 5024,
untreated lysis L(E:T) = 70 (1 - exp(-k E:T)) with L(50) = 48 %, LL.4 suppression (slope 1.6, bottom 40 %
of the top, IC50 1.5 mg/mL / RP), 3 % pipetting noise, Poisson counting. Fixed wells carry the numbers
quoted in issue 15:

``triplicate_ok``
    clean; A1-A3 = 1280 / 1280 / 1281 (a tie: Dixon's Q = 1.000 > 0.970), background G10-G12 = 29 / 31 / 29.
``maximum_44904``
    as ``triplicate_ok`` with the maximum wells G4-G6 = 4972 / 5076 / 44904 (a typo): must fail QC.
``block_6x3``
    a plate like ``triplicate_ok`` (its own noise: an identical export is a ``duplicate``), but the layout has ``[block.6x3.A4]`` typed for ``[block.3x6.A4]``:
    the reference overwrites LOT-B's A7-C9 and keeps 3 of its 6 concentrations (LAYOUT_OVERLAP).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "plates"
LOTS = {"LOT-A": ("A1", 2.0), "REF-001": ("A4", 1.0), "LOT-B": ("A7", 0.7), "LOT-C": ("A10", 1.3)}
CONC = dict(zip("ABCDEF", (10, 3, 1, 0.3, 0.1, 0.03)))
S, M = 520.0, 5024.0
K = -math.log(1 - 48 / 70) / 50


def layout(name: str, typo: bool = False) -> str:
    lines = [f"# issue-15 test plate {name} (tools/make_test_plates.py)", "[meta]", f'path = "{name}.csv"',
             'include = "triplicate_96.toml"', "", "[expt]", 'reference_lot = "REF-001"', 'donor = "D15"',
             'date = "2026-05-04"', ""]  # fmt: skip
    for lot, (well, _) in LOTS.items():
        size = "6x3" if typo and lot == "REF-001" else "3x6"
        lines += [f"[block.{size}.{well}]", 'role = "sample"', f'lot = "{lot}"', "et_ratio = 50", ""]
    return "\n".join(lines)


def expected() -> dict[str, float]:
    """Expected CPM of every well of the (correct) triplicate layout."""
    cpm = {}
    d = 70 * (1 - math.exp(-K * 50))
    for well, rp in LOTS.values():
        c0 = int(well[1:])
        for row, conc in CONC.items():
            lysis = 0.4 * d + 0.6 * d / (1 + math.exp(1.6 * (math.log(conc) - math.log(1.5 / rp))))
            for c in range(c0, c0 + 3):
                cpm[f"{row}{c}"] = S + lysis / 100 * (M - S)
    for c in range(1, 4):
        cpm[f"G{c}"], cpm[f"G{c + 3}"], cpm[f"G{c + 6}"] = S, M, S + d / 100 * (M - S)
    for i, et in enumerate((50, 25, 12.5, 6.25)):
        for c in range(3 * i + 1, 3 * i + 4):
            cpm[f"H{c}"] = S + 70 * (1 - math.exp(-K * et)) / 100 * (M - S)
    return cpm


def counts(seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    out = {w: int(rng.poisson(v * rng.lognormal(0, 0.03))) for w, v in expected().items()}
    out |= {"A1": 1280, "A2": 1280, "A3": 1281, "G10": 29, "G11": 31, "G12": 29}
    return out


def write(name: str, cpm: dict[str, int], typo: bool = False) -> None:
    (OUT / f"{name}.toml").write_text(layout(name, typo))
    order = sorted(cpm, key=lambda w: ("ABCDEFGH".index(w[0]), int(w[1:])))
    (OUT / f"{name}.csv").write_text("Well,CPM\n" + "".join(f"{w},{cpm[w]}\n" for w in order))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = counts(15)
    write("triplicate_ok", base)
    write("maximum_44904", base | {"G4": 4972, "G5": 5076, "G6": 44904})
    write("block_6x3", counts(16), typo=True)  # its own counts: identical exports would be duplicates


if __name__ == "__main__":
    main()
