"""The README's results section, rendered from the artifacts the pipeline wrote (the git-tracked metrics of
`dvc.lock`'s run): `python tools/readme_results.py --write` puts it into `nbs/index.ipynb`, `--readme` renders
README.md from that notebook (nbconvert, then links rewritten for the repository root); `tests/test_repository.py`
renders both again and checks that the README holds exactly this text, so every number and every "apart" /
"overlap" in it is the pipeline's, not a hand copy.

Links: the notebook lives in `nbs/`, so JupyterLab resolves its relative links from there (`../artifacts/...`);
the README lives at the root (`artifacts/...`). The notebook is written with `../` links and the README drops them."""
from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX_CELL = 7   # the results cell of nbs/index.ipynb


def _load(p: str) -> dict: return json.loads((ROOT / p).read_text())


class Figures:
    "What the text quotes, read from the artifacts"
    def __init__(self):
        self.ev = _load("artifacts/evaluate/metrics.json")
        self.gan = _load("artifacts/generators/sface/metrics.json")
        self.aud = _load("artifacts/audit/audit.json")
        self.filtered = _load("artifacts/generate/arcbiface/report.json")["summary"]
        self.vig = _load("artifacts/generate/vigface/report.json")["summary"]
        self.vig_gen = _load("artifacts/generators/vigface/metrics.json")
        self.stage1 = _load("artifacts/train_fr/vigface_stage1/live/metrics.json")
        self.times = {Path(p).stem: json.loads(Path(p).read_text())["seconds"]
                      for p in glob.glob(str(ROOT / "artifacts/stage_times/*.json"))}

    def acc(self, m: str, b: str = "procedural") -> float: return 100 * self.ev[m][b]["accuracy"]
    def ci(self, m: str, b: str = "procedural") -> list[float]: return [100 * x for x in self.ev[m][b]["accuracy_ci"]]
    def r1(self, m: str) -> float: return 100 * self.ev[m]["identification"]["rank1"]

    def apart(self, a: str, b: str, bench: str = "procedural") -> bool:
        "Whether the 95 % intervals of runs `a` and `b` do not overlap"
        (alo, ahi), (blo, bhi) = self.ci(a, bench), self.ci(b, bench)
        return ahi < blo or bhi < alo

    def minutes(self, pick=lambda stage: True) -> float:
        return sum(s for k, s in self.times.items() if pick(k)) / 60


def pct(x: float) -> str: return f"{100 * x:.1f} %"


def interval(f: Figures, m: str, b: str = "procedural") -> str:
    lo, hi = f.ci(m, b)
    return f"[{lo:.1f}, {hi:.1f}]"


def versus(f: Figures, a: str, b: str, bench: str = "procedural") -> str:
    "'a's figure [interval] against b's [interval]', and whether the intervals are apart"
    rel = "the intervals are apart" if f.apart(a, b, bench) else "the intervals overlap"
    return (f"{f.acc(a, bench):.1f} % {interval(f, a, bench)} against {f.acc(b, bench):.1f} % {interval(f, b, bench)} "
            f"({rel})")


def share_ci(s: dict, key: str) -> str:
    lo, hi = s[key]
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def relation_verdict(ks: float) -> str:
    "What the identity-relation test says about SFace's classes (a KS statistic above 0.2: same-label scores stand apart)"
    if ks > 0.2:
        return (": a class-conditional GAN trained on 16 images per identity reproduces its training identities, the opposite "
                "of what SFace reports at CASIA-WebFace scale, and what the audit exists to catch before a synthetic set is "
                "published")
    return ": the same-label and the different-label similarities are alike, so this run does not show SFace's classes reproducing their authentic identities"


def render() -> str:
    "The results section of the README"
    f = Figures()
    s, ag = f.aud["sets"]["sface"], f.aud["agreement"]
    am, ts = f.aud["model_info"], f.aud["threshold_source"]
    ref_name, ref = next(iter(f.aud["reference_models"].items()))
    rs = ref["sets"]["sface"]
    fs, vg, st1 = f.filtered, f.vig, f.stage1
    n_methods = 4
    total = f.minutes()
    sface_part = f.minutes(lambda k: "sface" in k or "teacher" in k)
    vig_part = f.minutes(lambda k: "vigface" in k)
    head = f"""## Results of the default CPU pipeline

Produced by `dvc repro` (what `make run` runs) on the 2-core CPU here, on a quiet machine, in {total:.1f} minutes of
stage time for {n_methods} methods (the table below; `dvc.lock` records every input's hash and `params.yaml` every
value; `artifacts/report/results.md` and `.png` are the `report` stage's outputs, pasted here unchanged; the text
after them is rendered from the pipeline's artifacts by `tools/readme_results.py`, and a test renders it again).

"""
    results = (ROOT / "artifacts/report/results.md").read_text().strip()
    usyn_apart = f.apart("usynthface", "untrained")
    vig_verdict = (": above it, although its images are not faces (each identity's images share a palette)"
                   if f.apart("vigface", "untrained") and f.acc("vigface") > f.acc("untrained") else ": not clearly above it")
    prose = f"""

![results](artifacts/report/results.png)

What the numbers mean. They are verification accuracies on *procedural drawings*, so they say nothing
about faces; they show that every stage runs, learns and is measured the way the papers measure. The
teacher trained on the authentic identities ({f.acc('teacher'):.1f} %) is the ceiling; the same network
untrained verifies {f.acc('untrained'):.1f} % (raw pixels: about 62 %). Intervals are 95 % bootstrap intervals over
the benchmark's pairs; pairs share identities, so they are if anything too narrow, and a seed sweep
(`tools/seed_sweep.py`, *Seed sweep* above) is the stronger check.

**SFace.** The tiny GAN reaches an identity accuracy of {f.gan['identity_acc_end']:.2f} on its generated images
after {f.gan['kimg']:.0f} kimg (chance {f.gan['chance']:.4f}). CLS on the synthetic labels reaches
{f.acc('sface_cls'):.1f} %, KT (label-free, mimicking the teacher at SFace's loss scale) {f.acc('sface_kt'):.1f} %,
and CL (labels and teacher) {f.acc('sface_cl'):.1f} %, {f.acc('teacher') - f.acc('sface_cl'):.1f} points below the
teacher. CL against CLS: {versus(f, 'sface_cl', 'sface_cls')}; SFace's paper orders them the same way (LFW 91.87 %
with CLS, 99.13 % with CL). 1:N identification on the held-out identities gives rank-1 {f.r1('sface_cl'):.1f} % for
CL, {f.r1('sface_cls'):.1f} % for CLS, {f.r1('sface_kt'):.1f} % for KT and {f.r1('teacher'):.1f} % for the teacher
(24 enrolled identities, so one probe is about 0.5 points).

**ArcBiFaceGAN.** Its Privacy & Diversity filter kept {fs['kept_identities']} of {fs['identities']:,} candidate
identities ({fs['images']} images; why the rest was refused: `nbs/27_arcbiface.ipynb` and the generate stage's
report), so the FR runs on its set learn little: {f.acc('arcbiface_vis'):.1f} % trained on the visible images,
{f.acc('arcbiface_vis_nir'):.1f} % on visible + NIR, on the visible benchmark. On the cross-modal benchmark (NIR
probe, visible gallery), visible + NIR against visible only: {versus(f, 'arcbiface_vis_nir', 'arcbiface_vis', 'procedural_nir_vis')}.
The filter's effect shows in the audit's agreement table: the filtered identities' own EER is
{pct(ag['arcbiface']['eer'])} against {pct(ag['arcbiface_unfiltered']['eer'])} for the same generator unfiltered.

**USynthFace.** MoCo on the unlabelled subjects of the same generator (no filter, a folder per subject, only to
pair two variants) against the same network untrained: {versus(f, 'usynthface', 'untrained')}{
', so this run shows it learning' if usyn_apart else ': this run does not show it clearly'}. The subjects'
variants share little identity under the audit model (genuine cosine {ag['arcbiface_unfiltered']['genuine_mean']:.2f}
against impostor {ag['arcbiface_unfiltered']['impostor_mean']:.2f}, EER {pct(ag['arcbiface_unfiltered']['eer'])};
authentic images {ag['authentic']['genuine_mean']:.2f} against {ag['authentic']['impostor_mean']:.2f}, EER
{pct(ag['authentic']['eer'])}): the positive pairs MoCo learns from are weak at this scale.

**VIGFace.** Stage 1 (ArcFace over the 128 authentic identities and {f.vig_gen['num_virtual']} virtual prototypes)
verifies {versus(f, 'vigface_stage1', 'teacher')} for the teacher, and {'keeps its virtual rows apart on average, as the paper claims'
if st1['mean_max_cos_virtual'] < st1['mean_max_cos_real'] else 'does not keep its virtual rows further apart than the real ones'}: each virtual row's nearest other row is at |cos| {st1['mean_max_cos_virtual']:.2f} on average, each
real row's nearest real row at {st1['mean_max_cos_real']:.2f} (the single closest pairs: {st1['max_cos_virtual']:.2f}
and {st1['max_cos_real']:.2f}). Stage 2 is where the cpu scale stops: the diffusion model trains
{f.vig_gen['loss/v_mse_end_kimg']:.1f} kimg in its share of the budget, its v-prediction loss falls from
{f.vig_gen['loss/v_mse_start']:.2f} to {f.vig_gen['loss/v_mse_end']:.2f} and the probe's images of *real* prototypes
move towards them (cosine {f.vig_gen['probe_cos_real_start']:.2f} → {f.vig_gen['probe_cos_real_end']:.2f}), but its
samples are a skin-toned blob on a coloured background in 4-px patches: the layout of the procedural faces, not yet
faces (the sample grid in `nbs/29_vigface.ipynb` and the generate stage's report). Images of {vg['num_identities']}
virtual prototypes ({vg['images']} images) sit at cosine {vg['cos_own']:.2f} to their own prototype and are closer
to it than to every real one in {pct(vg['closer_than_real'])} of cases, so VIGFace's claim for virtual identities
is not reproduced at this scale. FR trained on them verifies {versus(f, 'vigface', 'untrained')} for the untrained
network{vig_verdict}.

**Audit.** The audit model, `{am['name']}`, trained on `data/{am['trained_on']}` ({am['n_training_identities']} procedural
identities disjoint from the authentic and the held-out ones; it verifies {versus(f, am['name'], 'untrained')} for the
untrained network), {'never saw the authentic identities' if ts['unseen_by_model'] else 'trained on the authentic identities'}: its
thresholds at FMR = {ts['fmr']:g} come from {ts['identity_level']['n_impostor_pairs']:,} impostor pairs of the authentic
identity centres and {ts['sample_level']['n_impostor_scores']:,} scores of authentic images against the other identities'
centres, people it never trained on. Under it, {pct(s['identity_share_above'])} {share_ci(s, 'identity_share_ci')} of SFace's
synthetic identities match an authentic identity above the identity-level threshold (authentic identities against each
other: {pct(s['identity_baseline_share_above'])} {share_ci(s, 'identity_baseline_share_ci')}), and {pct(s['sample_share_above'])}
of its synthetic images do (authentic images: {pct(s['sample_baseline_share_above'])}); SFace's identity-relation test
compares synthetic class *c* with authentic class *c* and with the others (KS statistic {s['relation_ks_statistic']:.2f}
between the same-label and the different-label similarities){relation_verdict(s['relation_ks_statistic'])}. The
{ref_name} ({'trained on the authentic identities' if ref['trained_on_authentic'] else 'trained on ' + str(ref['trained_on'])}, the
audit's model before issue 15) gives {pct(rs['identity_share_above'])} of identities ({pct(rs['identity_baseline_share_above'])}
baseline) and {pct(rs['sample_share_above'])} of images ({pct(rs['sample_baseline_share_above'])}), KS statistic
{rs['relation_ks_statistic']:.2f}, with thresholds from identities its loss pushed apart.

The run took {total:.1f} minutes against a budget of 20 for every landed method; SFace's stages (with the teacher)
took {sface_part:.1f} of them, against issue 16's goal of 8, and VIGFace's {vig_part:.1f}."""
    return head + results + prose


# A markdown link or image target that is relative to the repository root: not a URL, an anchor, absolute or `../`.
_ROOT_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|#|/|\.\./)")


def notebook_links(md: str) -> str:
    "Markdown with the repository root's relative links made relative to `nbs/` (where the notebook opens)"
    return _ROOT_LINK.sub(r"\1../", md)


def root_links(md: str) -> str:
    "Markdown with the notebook's `../` links made relative to the repository root (where the README lives)"
    return md.replace("](../", "](")


def write_index(text: str) -> None:
    "Put the rendered section into the results cell of nbs/index.ipynb, its links relative to `nbs/`"
    path = ROOT / "nbs/index.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][INDEX_CELL]["source"] = notebook_links(text).splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def readme() -> str:
    "README.md: nbs/index.ipynb converted to markdown by nbconvert, its links made relative to the repository root"
    out = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "markdown", "--stdout", "nbs/index.ipynb"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return root_links(out.stdout)


def write_readme() -> None:
    "Write README.md atomically (a temporary file renamed over it)"
    tmp = ROOT / "README.md.tmp"
    tmp.write_text(readme())
    tmp.replace(ROOT / "README.md")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write the section into nbs/index.ipynb (else print it)")
    ap.add_argument("--readme", action="store_true", help="render README.md from nbs/index.ipynb (after --write)")
    args = ap.parse_args()
    if args.write: write_index(render())
    if args.readme: write_readme()
    if not (args.write or args.readme): print(render())
