"""Regenerate the small sample files in datasets/samples/ (deterministic).

All samples are *synthetic* (drawn from ``SyntheticICUDataModule``, seed 0): no real patient
data is stored in the repository. Usage: ``python datasets/make_samples.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tsode.data import SyntheticICUDataModule

HERE = Path(__file__).resolve().parent / "samples"
# synthetic ICU channel -> PhysioNet 2012 variable name (for the format sample)
PHYSIONET_NAMES = {
    "heart_rate": "HR",
    "resp_rate": "RespRate",
    "map": "MAP",
    "temp": "Temp",
    "lactate": "Lactate",
}


def sample_frames(num_series: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long frame with datetime times, wide frame with float hours + static + label)."""
    dm = SyntheticICUDataModule(num_series=num_series, seed=0)
    dm.setup()
    table = dm.table
    rng = np.random.default_rng(0)
    long = table.to_long_frame()
    long["value"] = long["value"].round(3)
    admission = pd.Timestamp("2024-01-01 00:00") + pd.to_timedelta(
        rng.integers(0, 30 * 24 * 60, table.num_series), unit="min"
    )
    adm = dict(zip(table.series_ids, admission))
    wide = long.pivot_table(index=["series_id", "time"], columns="channel", values="value")
    wide = wide.reindex(columns=table.channels).reset_index()
    wide.columns.name = None
    units = dict(zip(table.series_ids, rng.integers(1, 5, table.num_series)))
    wide["icu_unit"] = wide["series_id"].map(units)
    lactate_max = long[long.channel == "lactate"].groupby("series_id")["value"].max()
    wide["lactate_high"] = wide["series_id"].map((lactate_max > 2.5).astype(int)).fillna(0)
    wide["lactate_high"] = wide["lactate_high"].astype(int)
    # long sample: datetimes (admission + hours), rounded to the minute like an ICU export
    long["time"] = (
        long["series_id"].map(adm) + pd.to_timedelta(long["time"] * 60, unit="min")
    ).dt.round("min")
    long = long.groupby(["series_id", "time", "channel"], as_index=False)["value"].mean()
    return long, wide


def write_physionet_records(long: pd.DataFrame, root: Path, num_records: int = 5) -> None:
    """Synthetic records in the official PhysioNet 2012 text format (set-a layout)."""
    out = root / "set-a"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    outcomes = []
    for k, (_sid, g) in enumerate(long.groupby("series_id", sort=True)):
        if k >= num_records:
            break
        rid = 900001 + k
        start = g["time"].min().floor("D")
        minutes = ((g["time"] - start).dt.total_seconds() // 60).astype(int)
        keep = minutes < 48 * 60
        lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}"]
        age, gender, icu = (
            int(rng.integers(20, 90)),
            int(rng.integers(0, 2)),
            int(rng.integers(1, 5)),
        )
        height = -1 if k % 2 else round(float(rng.uniform(150, 195)), 1)
        weight = round(float(rng.uniform(50, 110)), 1)
        lines += [
            f"00:00,Age,{age}",
            f"00:00,Gender,{gender}",
            f"00:00,Height,{height}",
            f"00:00,ICUType,{icu}",
            f"00:00,Weight,{weight}",
        ]
        rows = sorted(zip(minutes[keep], g["channel"][keep], g["value"][keep]))
        for m, ch, v in rows:
            lines.append(f"{m // 60:02d}:{m % 60:02d},{PHYSIONET_NAMES[ch]},{v:g}")
        (out / f"{rid}.txt").write_text("\n".join(lines) + "\n")
        outcomes.append((rid, int(rng.integers(0, 2))))
    text = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
    text += "".join(f"{rid},-1,-1,-1,-1,{died}\n" for rid, died in outcomes)
    (root / "Outcomes-a.txt").write_text(text)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    long, wide = sample_frames()
    long.to_csv(HERE / "icu_long.csv", index=False, date_format="%Y-%m-%d %H:%M")
    long.to_parquet(HERE / "icu_long.parquet", index=False)
    wide.to_csv(HERE / "icu_wide.csv", index=False, float_format="%.6g")
    wide.to_parquet(HERE / "icu_wide.parquet", index=False)
    write_physionet_records(long, HERE / "physionet2012")
    print(f"wrote samples to {HERE}")


if __name__ == "__main__":
    main()
