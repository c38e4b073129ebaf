"""Result tables and plots shared by the reports and experiments: Markdown and CSV tables, a metric-against-NFE
pivot and its plot (one line per sampler), and effective weightings over log-SNR."""
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ADAPTIVE_OPTIONS = ("rtol", "atol")  # options that change the NFE of a run, not the sampler it belongs to


def fmt(v):
  if isinstance(v, float):
    return f"{v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:.0e}"
  return "" if v is None else str(v)


def markdown_table(rows, columns):
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write_csv(rows, columns, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def family(row, option_keys):
  """The sampler a run belongs to: its name and options, without tolerances (e.g. 'pc predictor=ancestral')."""
  opts = [f"{k}={row[k]}" for k in sorted(option_keys) if k in row and k not in ADAPTIVE_OPTIONS]
  return " ".join([row["sampler"]] + opts)


def pivot_by_nfe(rows, metric, option_keys, column="nfe"):
  """(Markdown table with one row per sampler family and one column per value of `column` (the NFE, or a target
  NFE), {family: [(actual nfe, value)]} for plot_by_nfe). Rows without `column` or `metric` are left out."""
  cells, curves = {}, {}
  for r in rows:
    if r.get(metric) is not None and r.get(column):
      f = family(r, option_keys)
      cells.setdefault(f, {})[str(r[column])] = r[metric]
      curves.setdefault(f, []).append((int(r["nfe"]), r[metric]))
  cols = sorted({c for row in cells.values() for c in row}, key=int)
  table = [{"sampler": f, **row} for f, row in sorted(cells.items())]
  return markdown_table(table, ["sampler"] + cols), curves


def plot_by_nfe(curves, metric, path, title=""):
  """One line per sampler family, log-log: FID spans orders of magnitude between too few and enough steps."""
  fig, ax = plt.subplots(figsize=(7.5, 4.6))
  for i, (name, pts) in enumerate(sorted(curves.items())):
    pts = sorted(pts)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker="osd^vx+*"[i // 10 % 8], color=plt.cm.tab10(i % 10),
            label=name, ms=4)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("network evaluations (NFE)")
  ax.set_ylabel(metric)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_weightings(curves, path, title="Effective weighting of the loss over log-SNR"):
  """curves: {label: (log_snr, w)} -> one line each (Kingma & Gao 2023, Fig. 2's view: w(lambda), each normalised)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (lam, w) in curves.items():
    ax.plot(lam, w, label=label)
  ax.set(xlabel="log SNR (left: noisy, coarse content; right: clean, fine detail)", ylabel="w(log SNR), normalised",
         title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
