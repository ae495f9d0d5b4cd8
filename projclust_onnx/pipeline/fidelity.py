"""How far the written model's outputs moved: mean cosine of each text's output to the original's.

Measured after the rewrite, on the files as written, under ONNX Runtime: the first output per
text, mean-pooled over the attention mask where it is per token (an encoder's hidden states),
as it is where it is per sequence (a classifier's logits). The texts are the user's
calibration text (lines spread over it) when given, else SAMPLE_TEXTS below: sentences
written for this check in several languages and registers, no domain's. A decoder with a KV
cache is not measured here (its inputs are not text alone): the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Written for this check (no corpus's text): everyday, technical, narrative and formal sentences, short and long,
# in English and in the languages multilingual encoders are most used for.
SAMPLE_TEXTS = (
    "The train to the airport leaves every twenty minutes, but on Sundays it runs only once an hour.",
    "Please restart the server after installing the update, otherwise the new settings will not be applied.",
    "She opened the letter slowly, as if the words inside could still change.",
    "Quarterly revenue rose by four percent, driven mostly by sales in the Asian market.",
    "How do I reset my password if I no longer have access to the email address on the account?",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "In 1969 the first humans walked on the Moon, watched by millions of people on television.",
    "The function returns an empty list when the input contains no valid entries.",
    "Heavy rain is expected tonight across the northern regions, with strong winds near the coast.",
    "I loved the first half of the film, but the ending felt rushed and confusing.",
    "Patients should not take this medication on an empty stomach.",
    "The committee will review all applications and announce its decision by the end of the month.",
    "lol that game last night was wild, cant believe they came back in the last minute",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Our hotel room was small but clean, and the staff were friendly and helpful.",
    "The contract may be terminated by either party with thirty days of written notice.",
    "Der Zug hatte wegen eines technischen Problems fast eine Stunde Verspätung.",
    "Könnten Sie mir bitte sagen, wie ich zum Bahnhof komme?",
    "Le musée est fermé le lundi, mais il reste ouvert tard le jeudi soir.",
    "Nous avons besoin de plus de temps pour analyser les résultats de l'étude.",
    "El mercado abre temprano y las frutas más frescas se venden antes de las nueve.",
    "¿Cuánto cuesta enviar un paquete pequeño a otro país?",
    "Il progetto è stato completato in anticipo rispetto alla scadenza prevista.",
    "O novo aplicativo permite pagar as contas diretamente pelo celular.",
    "De gemeente wil meer fietspaden aanleggen in het centrum van de stad.",
    "Nowe przepisy wejdą w życie od początku przyszłego roku.",
    "Погода завтра будет солнечной, но довольно холодной.",
    "Bu akşam arkadaşlarımla yemeğe çıkmayı planlıyorum.",
    "明天上午十点我们在会议室讨论新项目的计划。",
    "この本はとても面白くて、一晩で読み終えてしまいました。",
    "이 제품은 가볍고 배터리가 오래 가서 여행할 때 좋습니다.",
    "يرجى إرسال المستندات المطلوبة قبل نهاية الأسبوع.",
    "मुझे यह किताब बहुत पसंद आई क्योंकि इसकी कहानी सरल और सच्ची है।",
    "Chúng tôi sẽ gặp nhau ở quán cà phê gần trường vào chiều mai.",
)
_TEXTS = 64  # texts measured at most: enough for a stable mean, seconds on a small model
_MAX_LENGTH = 128


@dataclass
class Fidelity:
    """Mean and least cosine of the compressed model's pooled outputs to the original's, over `texts` texts
    from `source`; `mean_cosine` is None where it was not measured, and `reason` says why."""

    mean_cosine: float | None
    min_cosine: float | None
    texts: int
    source: str
    reason: str | None = None


def sample_texts(config) -> tuple[list[str], str]:
    """(texts, where they come from): up to 64 lines spread evenly over the calibration text, else the
    built-in sample."""
    from projclust_onnx.core.calibration import read_lines

    if config.calibration_text:
        lines = [line.strip() for line in read_lines(config.calibration_text) if len(line.split()) >= 4]
        if lines:
            picked = [lines[i] for i in np.linspace(0, len(lines) - 1, min(_TEXTS, len(lines))).astype(int)]
            names = ", ".join(Path(p).name for p in config.calibration_text)
            return picked, f"lines of {names} (the calibration text)"
    return list(SAMPLE_TEXTS), f"the built-in sample of {len(SAMPLE_TEXTS)} sentences in 16 languages"


def pooled_outputs(session, tokenizer, texts: list[tuple[str, ...]], max_length: int = _MAX_LENGTH,
                   progress=None) -> tuple[np.ndarray, bool]:
    """First output per text, float64: logits as they are (True), hidden states mean-pooled over the attention
    mask (False). `texts` are tuples of one or two strings (a pair for pair classifiers); `progress` wraps the
    batches (a bar)."""
    out, is_logits = [], True
    starts = range(0, len(texts), 32)
    wanted = {i.name for i in session.get_inputs()}
    for start in progress(starts) if progress is not None else starts:
        columns = list(zip(*texts[start:start + 32]))
        batch = tokenizer(*[list(c) for c in columns], padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        feeds = {k: v for k, v in batch.items() if k in wanted}
        first = session.run(None, feeds)[0].astype(np.float64)
        if first.ndim == 3:
            mask = batch["attention_mask"][..., None]
            first, is_logits = (first * mask).sum(1) / np.maximum(mask.sum(1), 1), False
        out.append(first.reshape(len(first), -1))
    return np.concatenate(out), is_logits


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of a and b, of shape (n, m); 1 where both rows are zero."""
    dot = (a * b).sum(1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, dot / np.maximum(norms, 1e-300), 1.0)


def measure_fidelity(original: Path, compressed: Path, tokenizer, texts: list[str], source: str) -> Fidelity:
    """The Fidelity of `compressed` to `original` (model files) on `texts`, one CPU session each in turn."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    outputs = []
    for path in (original, compressed):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if any("past" in name or "cache" in name for name in names) or "input_ids" not in names:
            return Fidelity(None, None, 0, source, "a decoder with a KV cache, or a model not fed by input_ids, is "
                                                   "not measured here (projclust-onnx benchmark --perplexity-text is)")
        outputs.append(pooled_outputs(session, tokenizer, [(t,) for t in texts])[0])
        del session
    values = cosines(*outputs)
    return Fidelity(float(values.mean()), float(values.min()), len(texts), source)
