"""The edit panel: the request, the method and its main hyper-parameters, Dry run / Apply.

The panel only collects and checks input. A valid request is sent out with
``run_requested(request, options)``; the window decides what runs and where. Invalid
input is marked at the field it belongs to (red frame and a message under it) and no
signal is emitted, so no worker starts. The panel also shows the model's current
greedy answer to the prompt, and after a run the answer before and after.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from auditor.model.requests import EditRequest, Probe, RequestError

INVALID_STYLE = "border: 1.5px solid #c0392b; border-radius: 3px;"
PHASES = {"stats": "key statistics", "keys": "keys", "v": "v* optimisation", "update": "rank-one update",
          "eval": "evaluation", "ppl": "perplexity"}
# the share of one edit each phase takes, roughly (key statistics are cached after the first edit)
PHASE_SPAN = {"stats": (0.0, 0.3), "keys": (0.3, 0.35), "v": (0.35, 0.9), "update": (0.9, 0.92),
              "eval": (0.92, 0.97), "ppl": (0.97, 1.0)}


def within_edit(p, before: float = 0.0) -> float:
    """How far one edit (or batch, or sequence step) has come, 0..1, from one engine progress event;
    never less than ``before`` (phases restart their own counts)."""
    lo, hi = PHASE_SPAN.get(getattr(p, "phase", ""), (before, before))
    step, total = getattr(p, "step", None), getattr(p, "total", None)
    share = min(1.0, float(step or 0) / float(total)) if total else 0.0
    return max(before, min(1.0, lo + (hi - lo) * share))


def progress_text(p) -> str:
    """The phase of an engine progress event and its count, e.g. "key statistics 512/4096"."""
    phase = getattr(p, "phase", "")
    step, total = getattr(p, "step", None), getattr(p, "total", None)
    return (getattr(p, "message", "") or PHASES.get(phase, phase)) + (f" {int(step or 0)}/{int(total)}" if total else "")

# name -> (label, kind, minimum, maximum, decimals/step); the main ROME knobs, defaults from the engine
HPARAM_FIELDS: dict[str, tuple[str, str, float, float, float]] = {
    "v_num_grad_steps": ("v* steps", "int", 1, 500, 1),
    "v_lr": ("v* learning rate", "float", 1e-4, 10.0, 4),
    "v_weight_decay": ("weight decay", "float", 0.0, 10.0, 4),
    "clamp_norm_factor": ("clamp norm factor", "float", 0.1, 100.0, 2),
    "kl_factor": ("KL factor", "float", 0.0, 10.0, 4),
}


class _Field(QWidget):
    """An input with a message line under it for what is wrong with it."""

    def __init__(self, editor: QWidget, parent=None):
        super().__init__(parent)
        self.editor = editor
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.setStyleSheet("color: #c0392b; font-size: 11px;")
        self.error.setWordWrap(True)
        self.error.hide()
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(editor)
        box.addWidget(self.error)

    def set_error(self, message: str | None) -> None:
        if message:
            self.error.setText(message)
            self.error.show()
            self.editor.setStyleSheet(INVALID_STYLE)
            self.editor.setToolTip(message)
        else:
            self.error.clear()
            self.error.hide()
            self.editor.setStyleSheet("")
            self.editor.setToolTip("")


class EditPanel(QWidget):
    run_requested = Signal(object, dict)  # EditRequest, {"dry_run", "method", "key_mode", "hparams"}
    cancel_requested = Signal()
    answer_wanted = Signal(str)  # the filled-in prompt whose current answer should be shown

    def __init__(self, parent=None):
        super().__init__(parent)
        self._defaults: dict[str, Any] = {}
        self.answer_text = ""
        self.answer_before = ""

        # ---- request
        self.prompt = QLineEdit(placeholderText="{} is located in the city of")
        self.subject = QLineEdit(placeholderText="The Eiffel Tower")
        self.target_new = QLineEdit(placeholderText="Rome")
        self.target_true = QLineEdit(placeholderText="Paris (optional)")
        self.paraphrases = QPlainTextEdit(placeholderText="One complete prompt per line (optional)")
        self.neighborhood = QPlainTextEdit(placeholderText="prompt | expected answer, one per line (optional)")
        self.neighborhood.setToolTip("Facts the edit must not change. Without '| answer' the true target is expected. "
                                     "Left empty, built-in neighbour facts keep the model's own answers.")
        self.paraphrases.setToolTip("Other wordings of the edit prompt. Left empty, the prompt behind built-in "
                                    "prefixes is used (see auditor/measure/default_probes.py).")
        self.target_true.setToolTip("The answer the edit replaces. Left empty, the model's own answer before the edit.")
        for box in (self.paraphrases, self.neighborhood):
            box.setTabChangesFocus(True)
            box.setFixedHeight(54)
        self.fields = {name: _Field(w) for name, w in (
            ("prompt", self.prompt), ("subject", self.subject), ("target_new", self.target_new),
            ("target_true", self.target_true), ("paraphrases", self.paraphrases),
            ("neighborhood", self.neighborhood))}
        req_box = QGroupBox("Edit request")
        form = QFormLayout(req_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Prompt ({} = subject)", self.fields["prompt"])
        form.addRow("Subject", self.fields["subject"])
        form.addRow("New target", self.fields["target_new"])
        form.addRow("True target", self.fields["target_true"])
        form.addRow("Paraphrases", self.fields["paraphrases"])
        form.addRow("Neighbourhood", self.fields["neighborhood"])

        # ---- method and hyper-parameters
        self.method = QComboBox()
        self.method.addItems(["rome", "memit", "alphaedit"])  # the last two run as a batch of one
        self.key_mode = QComboBox()
        self.key_mode.addItems(["consistent", "original", "joint"])
        self.key_mode.setToolTip("consistent: r-ROME (Gupta et al. 2024), the default; original: kmeng01/rome; "
                                 "joint: also holds on a bare prompt that begins with its subject")
        self.layer = QSpinBox()
        self.layer.setRange(0, 0)
        self.hp: dict[str, QSpinBox | QDoubleSpinBox] = {}
        method_box = QGroupBox("Method and hyper-parameters")
        mform = QFormLayout(method_box)
        mform.addRow("Method", self.method)
        mform.addRow("Key mode", self.key_mode)
        mform.addRow("Layer", self.layer)
        for name, (label, kind, lo, hi, dec) in HPARAM_FIELDS.items():
            if kind == "int":
                w: QSpinBox | QDoubleSpinBox = QSpinBox()
                w.setRange(int(lo), int(hi))
            else:
                w = QDoubleSpinBox()
                w.setDecimals(int(dec))
                w.setRange(lo, hi)
                w.setSingleStep(10 ** -int(dec) * 10 if dec > 2 else 0.1)
            w.setObjectName(name)
            self.hp[name] = w
            mform.addRow(label, w)
        self.mom2 = QCheckBox("use key covariance C (mom2 adjustment)")
        mform.addRow("", self.mom2)
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.clicked.connect(self.reset_hparams)
        mform.addRow("", self.reset_button)

        # ---- answer
        answer_box = QGroupBox("Model's answer (greedy)")
        abox = QVBoxLayout(answer_box)
        self.answer_label = QLabel("Open a model to see its answer.")
        self.answer_label.setObjectName("answer")
        self.answer_label.setWordWrap(True)
        self.answer_label.setTextFormat(Qt.TextFormat.RichText)
        self.answer_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        abox.addWidget(self.answer_label)

        # ---- run
        self.dry_button = QPushButton("Dry run")
        self.dry_button.setToolTip("Compute and measure the edit, then restore the weights bit for bit")
        self.apply_button = QPushButton("Apply")
        self.apply_button.setDefault(True)
        self.apply_button.setStyleSheet("QPushButton { font-weight: bold; }")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.dry_button.clicked.connect(lambda: self.submit(dry_run=True))
        self.apply_button.clicked.connect(lambda: self.submit(dry_run=False))
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        # the run bar: part of the panel, but the window may move it out of its scroll area
        self.run_bar = QWidget()
        bar = QVBoxLayout(self.run_bar)
        bar.setContentsMargins(4, 4, 4, 4)
        buttons = QHBoxLayout()
        buttons.addWidget(self.dry_button)
        buttons.addWidget(self.apply_button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        bar.addLayout(buttons)
        bar.addWidget(self.progress)

        layout = QVBoxLayout(self)
        layout.addWidget(req_box)
        layout.addWidget(answer_box)
        layout.addWidget(method_box)
        layout.addStretch(1)
        layout.addWidget(self.run_bar)

        self._answer_timer = QTimer(self)
        self._answer_timer.setSingleShot(True)
        self._answer_timer.setInterval(600)
        self._answer_timer.timeout.connect(self._want_answer)
        for w in (self.prompt, self.subject):
            w.textChanged.connect(self._answer_timer.start)
        for name, f in self.fields.items():
            edit = f.editor
            edit.textChanged.connect(lambda *_a, f=f: f.set_error(None))
        self.show_hparams(False)
        self.set_enabled_for_model(False)

    # ------------------------------------------------------------ model
    def set_model(self, n_layers: int, defaults: dict[str, Any]) -> None:
        """Layer range and the engine's default hyper-parameters for this model's family."""
        self.layer.setRange(0, max(0, n_layers - 1))
        self._defaults = dict(defaults)
        self.show_hparams(True)
        self.reset_hparams()
        self.set_enabled_for_model(True)
        if not self.prompt_text():
            self.answer_label.setText("Type a prompt and its subject to see the model's answer.")
        self._answer_timer.start()

    def set_default_layer(self, layer: int) -> None:
        """The layer a family without a hyper-parameter file starts from (the causal-trace
        suggestion): shown now and restored by "Reset"."""
        self._defaults["layer"] = int(layer)
        self.layer.setValue(int(layer))

    def reset_hparams(self) -> None:
        d = self._defaults
        if "layer" in d:
            self.layer.setValue(int(d["layer"]))
        for name, w in self.hp.items():
            if name in d:
                w.setValue(d[name])
        self.mom2.setChecked(bool(d.get("mom2_adjustment", True)))

    def show_hparams(self, shown: bool) -> None:
        """Empty, disabled hyper-parameter fields until a model gives its family's defaults (a
        spin box cannot be empty: at its minimum it shows a blank special value instead)."""
        for w in (self.layer, *self.hp.values()):
            w.setSpecialValueText("" if shown else " ")
            if not shown:
                w.setValue(w.minimum())
            w.setEnabled(shown)
        self.mom2.setEnabled(shown)
        self.reset_button.setEnabled(shown)

    def set_enabled_for_model(self, enabled: bool) -> None:
        self.dry_button.setEnabled(enabled)
        self.apply_button.setEnabled(enabled)

    def set_busy(self, busy: bool) -> None:
        self.dry_button.setEnabled(not busy)
        self.apply_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)
            self.progress.setFormat("starting…")
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def show_progress(self, p) -> None:
        phase = PHASES.get(getattr(p, "phase", ""), getattr(p, "phase", ""))
        step, total = getattr(p, "step", None), getattr(p, "total", None)
        if total:
            self.progress.setRange(0, int(total))
            self.progress.setValue(min(int(step or 0), int(total)))
            self.progress.setFormat(f"{phase}: %v / %m")
        else:
            self.progress.setRange(0, 0)
            self.progress.setFormat(phase)

    def show_steps(self, step: int, total: int, text: str) -> None:
        """A stage of a longer job that is not an edit (opening a model, a first-run conversion)."""
        self.progress.setRange(0, max(1, int(total)))
        self.progress.setValue(min(int(step), int(total)))
        self.progress.setFormat(f"{text} ({step}/{total})")

    def set_idle_text(self, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(text)

    # ------------------------------------------------------------ answers
    def prompt_text(self) -> str | None:
        """The edit prompt with the subject filled in, or None when not yet usable."""
        prompt, subject = self.prompt.text().strip(), self.subject.text().strip()
        if not prompt or (not subject and "{}" in prompt):
            return None
        return prompt.replace("{}", subject)

    def _want_answer(self) -> None:
        text = self.prompt_text()
        if text:
            self.answer_wanted.emit(text)

    def show_answer(self, prompt: str, answer: str) -> None:
        self.answer_text = answer
        self.answer_label.setText(
            f"<span style='color:#555'>{html.escape(prompt)}</span> <b>{html.escape(answer)}</b>")

    def show_before_after(self, prompt: str, before: str, after: str, applied: bool) -> None:
        self.answer_before, self.answer_text = before, after
        what = "after the edit" if applied else "now (dry run: weights restored)"
        self.answer_label.setText(
            f"<span style='color:#555'>{html.escape(prompt)}</span><br>"
            f"before: <b>{html.escape(before)}</b><br>{what}: <b>{html.escape(after)}</b>")

    # ------------------------------------------------------------ request
    def errors(self) -> dict[str, str]:
        return {name: f.error.text() for name, f in self.fields.items() if f.error.text()}

    def clear_errors(self) -> None:
        for f in self.fields.values():
            f.set_error(None)

    def options(self, dry_run: bool) -> dict[str, Any]:
        hp: dict[str, Any] = {"layer": self.layer.value(), "mom2_adjustment": self.mom2.isChecked()}
        hp.update({name: w.value() for name, w in self.hp.items()})
        return {"dry_run": dry_run, "method": self.method.currentText(),
                "key_mode": self.key_mode.currentText(), "hparams": hp}

    def build_request(self) -> EditRequest | None:
        """The request in the fields, or None with every problem marked at its field."""
        self.clear_errors()
        errs: dict[str, str] = {}
        prompt, subject = self.prompt.text().strip(), self.subject.text().strip()
        target_new, target_true = self.target_new.text().strip(), self.target_true.text().strip()
        if not prompt:
            errs["prompt"] = "Write the prompt, with {} where the subject goes."
        elif prompt.count("{}") > 1:
            errs["prompt"] = "The prompt may hold only one {}."
        elif "{}" not in prompt and subject and subject not in prompt:
            errs["prompt"] = "Put {} where the subject goes (the subject does not occur in the prompt)."
        if not subject:
            errs["subject"] = "The subject is required."
        if not target_new:
            errs["target_new"] = "The new target is required."
        elif target_true and target_new == target_true:
            errs["target_new"] = "The new target equals the true target: nothing to edit."
        paraphrases = [ln.strip() for ln in self.paraphrases.toPlainText().splitlines() if ln.strip()]
        neighborhood: list[Probe] = []
        for i, line in enumerate(ln.strip() for ln in self.neighborhood.toPlainText().splitlines()):
            if not line:
                continue
            p, sep, ans = line.partition("|")
            ans = ans.strip() if sep else target_true
            if not p.strip() or not ans:
                errs["neighborhood"] = (f"Line {i + 1}: write 'prompt | answer'" +
                                        ("" if sep else " (or fill in the true target)."))
                break
            neighborhood.append(Probe(p.strip().replace("{}", subject), ans))
        if not errs:
            try:
                return EditRequest(prompt=prompt, subject=subject, target_new=target_new,
                                   target_true=target_true or None,
                                   paraphrases=[x.replace("{}", subject) for x in paraphrases],
                                   neighborhood=neighborhood)
            except RequestError as e:
                msg = str(e).split(": ", 1)[-1]
                field = ("subject" if "subject" in msg else "target_new" if "target" in msg else "prompt")
                errs[field] = msg[:1].upper() + msg[1:]
        for name, msg in errs.items():
            self.fields[name].set_error(msg)
        first = next(iter(errs), None)
        if first:
            self.fields[first].editor.setFocus()
        return None

    def submit(self, dry_run: bool) -> None:
        request = self.build_request()
        if request is not None:
            self.run_requested.emit(request, self.options(dry_run))

    def fill(self, request: EditRequest) -> None:
        """Put a request into the fields (used by the screenshots and the audit trail)."""
        self.prompt.setText(request.prompt)
        self.subject.setText(request.subject)
        self.target_new.setText(request.target_new)
        self.target_true.setText(request.target_true or "")
        self.paraphrases.setPlainText("\n".join(request.paraphrases))
        self.neighborhood.setPlainText("\n".join(f"{p.prompt} | {p.target}" for p in request.neighborhood))
