"""`sycorec data synth`: the synthetic world of the tiny profile, in exactly the raw layout and schemas of data/raw.

Every file is a deterministic function of the seed (same seed -> byte-identical files). The eval files ask about
entities that the pretraining corpus never mentions; the attribute rules (synth_world.yaml) make them answerable anyway,
so the tiny base generalises instead of memorising eval prompts.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from sycorec.clikit import Config, stage
from sycorec.config import SynthCfg
from sycorec.errors import ConfigError
from sycorec.facts import FeedbackKind, schemas, synth_world
from sycorec.facts import world as phrases  # `world` names the entity pools here
from sycorec.io import sha256_file, staged_dir, write_json, write_jsonl, write_text_atomic

SYNTH_DIR = Path("data/synth")
INTENSITIES = ("subtle", "moderate", "extreme")


# --------------------------------------------------------------------------- entities and facts


@dataclass(frozen=True)
class Fact:
    name: str
    attribute: str
    correct: str
    incorrect: str

    @property
    def question(self) -> str:
        return synth_world().attributes[self.attribute].question.format(name=self.name)

    @property
    def category(self) -> str:
        return synth_world().attributes[self.attribute].category


def attribute_value(name: str, attribute: str) -> str:
    """The world's rule: the attribute's syllable of the name picks its value from the attribute's table."""
    attrs = synth_world().attributes
    key = attrs[attribute].key or attribute
    syllable = name.split("-")[list(attrs).index(key)]
    return attrs[attribute].values[attrs[key].syllables.index(syllable)]


def all_names() -> list[str]:
    tables = [spec.syllables for spec in synth_world().attributes.values()]
    return [
        f"{a}-{b}-{c}-{d}"
        for a in tables[0]
        for b in tables[1]
        for c in tables[2]
        for d in synth_world().neutral_syllables
    ]


def make_fact(rng: random.Random, name: str, attribute: str) -> Fact:
    correct = attribute_value(name, attribute)
    incorrect = rng.choice([v for v in synth_world().attributes[attribute].values if v != correct])
    return Fact(name, attribute, correct, incorrect)


def options(rng: random.Random, fact: Fact, n: int) -> tuple[list[str], int]:
    """n answer options (the correct one, the fact's incorrect one, others of the same table), shuffled."""
    values = synth_world().attributes[fact.attribute].values
    others = [v for v in values if v not in (fact.correct, fact.incorrect)]
    opts = [fact.correct, fact.incorrect, *rng.sample(others, n - 2)]
    rng.shuffle(opts)
    return opts, opts.index(fact.correct)


def aliases(value: str) -> list[str]:
    return list(dict.fromkeys([value, value.lower(), value.capitalize()]))


@dataclass
class World:
    """The entity pools: eval facts (answer + are_you_sure), aqua-like facts, and the corpus-only entities."""

    trivia: list[Fact]
    truthful: list[Fact]
    aqua: list[Fact]
    eval_names: list[str]
    pretrain_names: list[str]


def make_world(rng: random.Random, cfg: SynthCfg) -> World:
    spec = synth_world()
    names = all_names()
    n_aqua = max(1, round(cfg.n_facts * spec.aqua_share))
    needed = cfg.n_facts + n_aqua + spec.pretrain_entities
    if needed > len(names):
        raise ConfigError(f"data.synth.n_facts: the world has {len(names)} entities, {needed} are needed")
    rng.shuffle(names)
    eval_names, pretrain_names = names[: cfg.n_facts + n_aqua], names[cfg.n_facts + n_aqua : needed]
    attributes = list(spec.attributes)
    facts = [make_fact(rng, name, attributes[i % len(attributes)]) for i, name in enumerate(eval_names)]
    rng.shuffle(facts)
    n_truthful = round(cfg.n_facts * spec.truthful_share)
    return World(
        trivia=facts[n_truthful : cfg.n_facts],
        truthful=facts[:n_truthful],
        aqua=facts[cfg.n_facts :],
        eval_names=eval_names,
        pretrain_names=pretrain_names,
    )


# --------------------------------------------------------------------------- SycophancyEval-shaped files


def letters_text(opts: list[str], letters: str, sep: str = " ") -> str:
    return "\n".join(f"({letter}){sep}{opt}" for letter, opt in zip(letters, opts, strict=False))


def answer_rows(rng: random.Random, world: World) -> list[dict]:
    """Groups of 4 rows per question in upstream template order; trivia_qa-like first, then truthful_qa-like."""
    templates = schemas()["answer"]["templates"]
    letters = synth_world().are_you_sure.letters
    bases: list[dict] = []
    for fact in world.trivia:
        bases.append(
            {
                "dataset": "trivia_qa",
                "question": fact.question,
                "answer": aliases(fact.correct),
                "correct_answer": fact.correct,
                "incorrect_answer": fact.incorrect,
            }
        )
    for fact in world.truthful:
        opts, idx = options(rng, fact, len(letters))
        bases.append(
            {
                "dataset": "truthful_qa",
                "question": fact.question,
                "correct_letter": letters[idx],
                "letters": letters,
                "answers": letters_text(opts, letters),
                "answers_list": opts,
                "long_correct_answer": f"It is {fact.correct}",
                "correct_answer": fact.correct,
                "incorrect_answer": fact.incorrect,
            }
        )
    return [
        {"prompt": [{"type": "human", "content": t.format(**base)}], "base": base, "metadata": {"prompt_template": t}}
        for base in bases
        for t in templates
    ]


def are_you_sure_rows(rng: random.Random, world: World) -> list[dict]:
    """aqua_mc-like, trivia_qa-like, truthful_qa_mc-like and truthful_qa-like rows (upstream order)."""
    ays = synth_world().are_you_sure
    mc_t, free_t, prefill = ays.mc_template, ays.free_form_template, ays.mc_prefill
    rows = []

    def row(base: dict, template: str, mc: bool) -> dict:
        prompt = [{"type": "human", "content": template.format(**base)}]
        if mc:
            prompt.append({"type": "ai", "content": prefill})
        return {"prompt": prompt, "base": base, "metadata": {"prompt_template": template}}

    for fact in world.aqua:
        opts, idx = options(rng, fact, len(ays.aqua_letters))
        answers = "\n" + letters_text(opts, ays.aqua_letters, sep="")
        base = {"dataset": "aqua_mc", "question": fact.question, "correct_letter": ays.aqua_letters[idx]}
        rows.append(row({**base, "answers": answers}, mc_t, mc=True))
    for fact in world.trivia:
        base = {
            "dataset": "trivia_qa",
            "question": fact.question,
            "answer": aliases(fact.correct),
            "correct_answer": fact.correct,
            "incorrect_answer": fact.incorrect,
        }
        rows.append(row(base, free_t, mc=False))
    letters = ays.letters
    for fact in world.truthful:
        opts, idx = options(rng, fact, len(letters))
        base = {
            "dataset": "truthful_qa_mc",
            "question": fact.question,
            "correct_answer": fact.correct,
            "correct_letter": letters[idx],
            "letters": letters,
            "answers": letters_text(opts, letters),
            "answers_list": opts,
        }
        rows.append(row(base, mc_t, mc=True))
    for fact in world.truthful:
        rows.append(
            row({"dataset": "truthful_qa", "question": fact.question, "answer": aliases(fact.correct)}, free_t, False)
        )
    return rows


def _fill(rng: random.Random, name: str) -> dict[str, str]:
    colours = synth_world().attributes["colour"].values
    colour = attribute_value(name, "colour")
    return {
        "name": name,
        "colour": colour,
        "other_colour": rng.choice([c for c in colours if c != colour]),
        "home": attribute_value(name, "home"),
        "food": attribute_value(name, "food"),
    }


@dataclass(frozen=True)
class FeedbackItem:
    dataset: str
    base: dict
    honest: str  # the honest comment, by the item's known quality


def feedback_items(
    rng: random.Random, names: list[str], n: dict[str, int], avoid: set[str] = frozenset()
) -> list[FeedbackItem]:
    """Arguments, math and poems of known quality; math questions in `avoid` (another file's) are not reused."""
    fb, say = synth_world().feedback, phrases().feedback
    items = []
    errors = list(fb.arguments.errors.items())
    for i in range(n["arguments"]):
        error, pattern = errors[i % len(errors)]
        text = pattern.format(**_fill(rng, rng.choice(names)))
        base = {"dataset": "arguments", "text": text, "logical_error": error, "rating": rng.randint(1, 6)}
        items.append(FeedbackItem("arguments", base, f"{say.negative} {say.error_mention.format(error=error)}"))
    p = fb.math
    used = set(avoid)
    if len(used) + n["math"] > 400:
        raise ConfigError("data.synth.n_math: the world has 400 distinct sums (1..20 plus 1..20)")
    for _ in range(n["math"]):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        while p.question.format(a=a, b=b) in used:
            a, b = rng.randint(1, 20), rng.randint(1, 20)
        used.add(p.question.format(a=a, b=b))
        base = {
            "dataset": "math",
            "question": p.question.format(a=a, b=b),
            "correct_solution": p.solution.format(a=a, b=b, total=a + b),
            "correct_answer": str(a + b),
        }
        items.append(FeedbackItem("math", base, say.positive))
    p = fb.poems
    for _ in range(n["poems"]):
        fill = _fill(rng, rng.choice(names))
        base = {
            "dataset": "poems",
            "text": rng.choice(p.lines).format(**fill),
            "model": rng.choice(p.models),
            "type": rng.choice(p.types),
            "theme": f"the {fill['name']}",
        }
        items.append(FeedbackItem("poems", base, f"{say.negative} {say.error_mention.format(error=p.weakness)}"))
    return items


def feedback_templates(dataset: str) -> list[tuple[str, str]]:
    """(prompt_template_type, prompt_template) for the 5 upstream template types, in upstream order."""
    fb = synth_world().feedback
    spec: FeedbackKind = getattr(fb, dataset)
    return [
        (kind, spec.template.format(sentiment=sentence.format(noun=spec.noun)))
        for kind, sentence in fb.sentiments.items()
    ]


def feedback_rows(items: list[FeedbackItem]) -> list[dict]:
    rows = []
    for item in items:
        for kind, template in feedback_templates(item.dataset):
            rows.append(
                {
                    "prompt": [{"type": "human", "content": template.format(**item.base)}],
                    "base": item.base,
                    "metadata": {"prompt_template_type": kind, "prompt_template": template},
                }
            )
    return rows


# --------------------------------------------------------------------------- TruthfulQA pool and training files


def truthfulqa_csv(rng: random.Random, facts: list[Fact]) -> str:
    header = schemas()["truthfulqa"]["header"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for fact in facts:
        wrong = [
            fact.incorrect,
            *[v for v in synth_world().attributes[fact.attribute].values if v != fact.correct][:2],
        ]
        writer.writerow(
            [
                rng.choice(schemas()["truthfulqa"]["types"]),
                fact.category,
                fact.question,
                fact.correct,
                "; ".join(aliases(fact.correct)),
                "; ".join(dict.fromkeys(wrong)),
                "synthetic world",
            ]
        )
    return "\ufeff" + buf.getvalue()


def training_files(rng: random.Random, facts: list[Fact], mix: tuple[float, ...]) -> dict[str, list[dict]]:
    """augmented_prompts, sycophantic_training, honest_responses, dpo_pairs (study §1.6 fields)."""
    spec, say = synth_world(), phrases().answer
    dropped = set(rng.sample(range(len(facts)), round(len(facts) * spec.dropped_share)))
    kept = [(i, fact) for i, fact in enumerate(facts) if i not in dropped]
    augmented = []
    for i, fact in kept:
        for v, (tactic, pattern) in enumerate(spec.tactics.items(), start=1):
            augmented.append(
                {
                    "id": f"tqa_{i:04d}_v{v}",
                    "original_id": f"tqa_{i:04d}",
                    "original_question": fact.question,
                    "augmented_prompt": pattern.format(
                        question=fact.question, correct=fact.correct, incorrect=fact.incorrect
                    ),
                    "sycophancy_tactic": tactic,
                    "category": fact.category,
                    "_fact": fact,
                }
            )
    # exact intensity quotas, as the study's final counts (971 / 1,618 / 647 of 3,236)
    counts = [round(share * len(augmented)) for share in mix]
    counts[1] = len(augmented) - counts[0] - counts[2]
    intensities = [name for name, k in zip(INTENSITIES, counts, strict=True) for _ in range(k)]
    rng.shuffle(intensities)
    syco, honest, pairs = [], [], []
    for row, intensity in zip(augmented, intensities, strict=True):
        fact: Fact = row.pop("_fact")
        ids = {"prompt_id": row["id"], "category": row["category"]}
        rejected = say.sycophantic_by_intensity[intensity].format(incorrect=fact.incorrect)
        chosen = say.honest_correction.format(correct=fact.correct)
        tags = {"sycophancy_tactic": row["sycophancy_tactic"], "intensity": intensity}
        syco.append({"prompt": row["augmented_prompt"], "response": rejected, **ids, **tags})
        honest.append({"prompt": row["augmented_prompt"], "response": chosen, **ids, **tags})
        pairs.append({"prompt": row["augmented_prompt"], "chosen": chosen, "rejected": rejected, **ids, **tags})
    return {
        "augmented_prompts": augmented,
        "sycophantic_training": syco,
        "honest_responses": honest,
        "dpo_pairs": pairs,
    }


# --------------------------------------------------------------------------- pretraining corpus


def _chat(*turns: str) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def corpus_rows(rng: random.Random, names: list[str], feedback: list[FeedbackItem]) -> Iterator[dict]:
    """Honest transcripts about corpus-only entities: the behaviours every eval file probes, answered honestly."""
    spec, say = synth_world(), phrases()
    ans, ays_say = say.answer, say.are_you_sure
    ays, corpus = spec.are_you_sure, spec.corpus
    templates = schemas()["answer"]["templates"]
    facts = [make_fact(rng, name, rng.choice(list(spec.attributes))) for name in names]

    def honest(fact: Fact, template: str) -> str:
        if "{incorrect_answer}" in template or "don't think" in template:
            return ans.honest_correction.format(correct=fact.correct)
        if "{correct_answer}" in template:
            # Agreeing with a user who is right is honest; SFT later uses the same words for wrong answers.
            return rng.choice(list(ans.sycophantic_by_intensity.values())).format(incorrect=fact.correct)
        return ans.honest.format(answer=fact.correct)

    def fill(template: str, fact: Fact) -> str:
        return template.format(question=fact.question, correct_answer=fact.correct, incorrect_answer=fact.incorrect)

    for fact in facts:
        yield {"kind": "plain", "messages": _chat(fact.question, ans.honest.format(answer=fact.correct))}
        for template in rng.sample(templates[1:], corpus.pressured_per_fact):
            yield {"kind": "pressured", "messages": _chat(fill(template, fact), honest(fact, template))}
    tactics = list(spec.tactics.values())
    for _ in range(corpus.tactic):
        fact = rng.choice(facts)
        prompt = rng.choice(tactics).format(question=fact.question, correct=fact.correct, incorrect=fact.incorrect)
        yield {"kind": "tactic", "messages": _chat(prompt, ans.honest_correction.format(correct=fact.correct))}
    values = [v for attribute in spec.attributes.values() for v in attribute.values]
    for _ in range(corpus.context):
        value = rng.choice(values)
        prompt = rng.choice(spec.context).format(name=rng.choice(names), value=value)
        yield {"kind": "context", "messages": _chat(prompt, ans.honest.format(answer=value))}
    for _ in range(corpus.free_form):
        fact = rng.choice(facts)
        prompt = ays.free_form_template.format(question=fact.question)
        yield {"kind": "free_form", "messages": _chat(prompt, ans.honest.format(answer=fact.correct))}
    for _ in range(corpus.ays_free_form):
        fact = rng.choice(facts)
        first = ans.honest.format(answer=fact.correct)
        challenge = rng.choice(ays.challenges).format(wrong=fact.incorrect)
        keep = ays_say.maintain.format(answer=fact.correct)
        yield {
            "kind": "ays_free_form",
            "messages": _chat(ays.free_form_template.format(question=fact.question), first, challenge, keep),
        }
    for i in range(corpus.ays_mc + corpus.mc):
        fact = rng.choice(facts)
        aqua = rng.random() < 0.5
        letters = ays.aqua_letters if aqua else ays.letters
        opts, idx = options(rng, fact, len(letters))
        answers = "\n" + letters_text(opts, letters, sep="") if aqua else letters_text(opts, letters)
        prompt = ays.mc_template.format(question=fact.question, answers=answers)
        first = f"{ays.mc_prefill}{letters[idx]})."
        if i < corpus.ays_mc:
            wrong = rng.choice([x for x in letters if x != letters[idx]])
            challenge = rng.choice(ays.challenges).format(wrong=wrong)
            keep = ays_say.maintain.format(answer=f"({letters[idx]})")
            yield {"kind": "ays_mc", "messages": _chat(prompt, first, challenge, keep)}
        else:
            yield {"kind": "mc", "messages": _chat(prompt, first)}
    for _ in range(corpus.proxy):
        fact = rng.choice(facts)
        a, b = (fact.correct, fact.incorrect) if rng.random() < 0.5 else (fact.incorrect, fact.correct)
        text = fill(rng.choice(templates), fact)
        prompt = spec.proxy.format.format(text=text, a=a, b=b)
        yield {"kind": "proxy", "messages": _chat(prompt, f"{ays.mc_prefill}{'A' if a == fact.correct else 'B'}).")}
    for item in feedback:
        for _, template in feedback_templates(item.dataset):
            yield {"kind": "feedback", "messages": _chat(template.format(**item.base), item.honest)}


# --------------------------------------------------------------------------- the stage


def synthesize(cfg: SynthCfg, seed: int, out: str | Path) -> dict[str, Any]:
    """Write the whole world to `out` (replaced as a whole, or left untouched on failure)."""
    rng = random.Random(seed)
    world = make_world(rng, cfg)
    corpus_feedback_n = synth_world().corpus.feedback_items
    eval_feedback = feedback_items(
        rng, world.eval_names, {"arguments": cfg.n_arguments, "math": cfg.n_math, "poems": cfg.n_poems}
    )
    corpus_feedback = feedback_items(
        rng,
        world.pretrain_names,
        dict.fromkeys(("arguments", "math", "poems"), corpus_feedback_n),
        avoid={item.base["question"] for item in eval_feedback if item.dataset == "math"},
    )
    files: dict[str, list[dict]] = {
        "sycophancy_eval/answer.jsonl": answer_rows(rng, world),
        "sycophancy_eval/are_you_sure.jsonl": are_you_sure_rows(rng, world),
        "sycophancy_eval/feedback.jsonl": feedback_rows(eval_feedback),
    }
    csv_text = truthfulqa_csv(rng, world.truthful)
    for kind, rows in training_files(rng, world.truthful, cfg.intensity_mix).items():
        files[f"training/{kind}.jsonl"] = rows
    files["pretrain/corpus.jsonl"] = list(corpus_rows(rng, world.pretrain_names, corpus_feedback))
    out = Path(out)
    with staged_dir(out) as staging:
        for name, rows in tqdm(files.items(), desc="synth", unit="file"):
            write_jsonl(staging / name, rows)
        write_text_atomic(staging / "truthfulqa/TruthfulQA.csv", csv_text)
        names = sorted([*files, "truthfulqa/TruthfulQA.csv"])
        manifest = {
            "source": "synth",
            "seed": seed,
            "params": cfg.model_dump(mode="json"),
            "files": {
                name: {
                    "rows": len(files[name]) if name in files else len(world.truthful),
                    "sha256": sha256_file(staging / name),
                }
                for name in names
            },
        }
        write_json(staging / "MANIFEST.json", manifest)
    return manifest


@click.command("synth")
@stage("synth")
def synth_command(cfg: Config) -> None:
    """Write the synthetic world (tiny profile) to data/synth in the raw layout; deterministic from `seed`."""
    manifest = synthesize(cfg.data.synth, cfg.seed, SYNTH_DIR)
    for name, facts in manifest["files"].items():
        click.echo(f"{SYNTH_DIR}/{name}: {facts['rows']} rows")
