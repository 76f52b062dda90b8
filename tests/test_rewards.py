"""Hand-written cases for the training reward and the evaluation metrics."""

import pytest

from memtrain_jax import rewards


class TestExtractBoxed:

  @pytest.mark.parametrize("text, expected", [
      (r"The answer is \boxed{Paris}.", "Paris"),
      (r"\boxed {Paris}", "Paris"),
      ("so boxed{Paris}", "Paris"),  # the paper's prompt writes "boxed{}" without a backslash
      (r"\fbox{42}", "42"),
      (r"first \boxed{Rome} then \boxed{Paris}", "Paris"),  # the last box wins
      (r"\boxed{\text{New {York}}}", r"\text{New {York}}"),  # nested braces stay balanced
      (r"\boxed{}", ""),
      (r"\boxed{Zürich} ☃", "Zürich"),
  ])
  def test_extracts_last_box(self, text, expected):
    assert rewards.extract_boxed(text) == expected

  @pytest.mark.parametrize("text", [
      "Paris",  # no box at all is no answer
      r"\boxed{Paris",  # unclosed
      r"\boxed{Rome} and then \boxed{Par",  # the last box is unclosed: no fallback to Rome
  ])
  def test_missing_or_unclosed_box_is_none(self, text):
    assert rewards.extract_boxed(text) is None


class TestTrainingExactMatch:

  @pytest.mark.parametrize("response, golds", [
      (r"\boxed{Greenwich Village}", ["Greenwich Village"]),
      (r"\boxed{greenwich village}", ["Greenwich Village"]),  # case
      (r"\boxed{GreenwichVillage}", ["Greenwich Village"]),  # spaces are deleted on both sides
      ("\\boxed{Greenwich\nVillage}", ["Greenwich Village"]),  # newlines too
      ("\\boxed{New\u00a0York}", ["new york"]),  # unicode whitespace
      (r"\boxed{Rome} no wait \boxed{Paris}", ["Paris"]),
      (r"\boxed{50\%}", ["50"]),  # MATH normalisation drops percent signs
      (r"\boxed{yes}", ["no", "yes"]),  # max over aliases
      (r"\boxed{Zürich}", ["ZÜRICH"]),  # unicode lower-casing
      (r"\boxed{Big {Stone} Gap}", ["big {stone} gap"]),
  ])
  def test_matches(self, response, golds):
    assert rewards.training_exact_match(response, golds) == 1.0

  @pytest.mark.parametrize("response, golds", [
      (r"\boxed{The Eiffel Tower}", ["Eiffel Tower"]),  # articles are NOT dropped in training
      (r"\boxed{Paris.}", ["Paris"]),  # nor punctuation
      ("Paris", ["Paris"]),  # missing box
      (r"\boxed{Paris} no, actually \boxed{Rome}", ["Paris"]),
      (r"\boxed{Paris}", []),
  ])
  def test_mismatches(self, response, golds):
    assert rewards.training_exact_match(response, golds) == 0.0

  def test_only_last_300_characters_are_searched(self):
    box = r"\boxed{Paris}"
    assert len(box) == 13
    assert rewards.training_exact_match(box + " " * 287, "Paris") == 1.0  # 300 chars in all
    # Losing only the backslash still leaves "boxed{...}", which the paper's prompt asks for.
    assert rewards.training_exact_match(box + " " * 288, "Paris") == 1.0
    assert rewards.training_exact_match(box + " " * 289, "Paris") == 0.0  # "oxed{Paris}"
    assert rewards.training_exact_match(box + " " * 500, "Paris") == 0.0

  def test_string_gold_is_one_alias(self):
    assert rewards.training_exact_match(r"\boxed{Paris}", "Paris") == 1.0


class TestNormalizeAnswer:

  @pytest.mark.parametrize("text, expected", [
      ("The Eiffel Tower", "eiffel tower"),
      ("  An   apple, a day! ", "apple day"),
      ("Theatre", "theatre"),  # "the" only as a whole word
      ("U.S.A.", "usa"),
      ("Zürich", "zürich"),
      ("rock-and-roll", "rockandroll"),
  ])
  def test_squad_normalisation(self, text, expected):
    assert rewards.normalize_answer(text) == expected


class TestEvaluationMetrics:

  def test_exact_match_ignores_case_articles_punctuation_spaces(self):
    assert rewards.exact_match("the  Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert rewards.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert rewards.exact_match("Lyon", ["Paris", "lyon"]) == 1.0
    assert rewards.exact_match(None, ["Paris"]) == 0.0

  def test_sub_exact_match_is_bidirectional(self):
    assert rewards.sub_exact_match("It is in Greenwich Village, NYC", ["Greenwich Village"]) == 1.0
    assert rewards.sub_exact_match("Greenwich", ["Greenwich Village"]) == 1.0
    assert rewards.sub_exact_match("Brooklyn", ["Greenwich Village"]) == 0.0
    assert rewards.sub_exact_match(None, ["x"]) == 0.0

  def test_sub_exact_match_rejects_empty_prediction(self):
    # "The." normalises to "", which is a substring of everything.
    assert rewards.sub_exact_match("The.", ["Paris"]) == 0.0

  def test_f1_partial_credit(self):
    # pred tokens {eiffel, tower, paris}, gold {eiffel, tower}: P=2/3, R=1, F1=0.8.
    assert rewards.f1_score("the Eiffel Tower, Paris", ["Eiffel Tower"]) == pytest.approx(0.8)
    assert rewards.f1_score("Louvre", ["Eiffel Tower"]) == 0.0
    assert rewards.f1_score("Eiffel Tower", ["Louvre", "eiffel tower"]) == 1.0  # max over aliases
    assert rewards.f1_score(None, ["x"]) == 0.0

  def test_f1_yes_no_get_no_partial_credit(self):
    assert rewards.f1_score("no", ["no"]) == 1.0
    assert rewards.f1_score("yes it is", ["yes"]) == 0.0


class TestMultiAnswer:

  def test_em_is_averaged_over_sub_questions(self):
    golds = [["Paris"], ["Berlin", "Berlin, Germany"]]
    assert rewards.multi_answer_exact_match("Paris; Berlin", golds) == 1.0
    assert rewards.multi_answer_exact_match("paris ; Rome", golds) == 0.5
    assert rewards.multi_answer_exact_match("Rome; the Berlin", golds) == 0.5
    assert rewards.multi_answer_exact_match("Rome; Madrid", golds) == 0.0

  def test_missing_and_surplus_answers(self):
    golds = [["Paris"], ["Berlin"]]
    assert rewards.multi_answer_exact_match("Paris", golds) == 0.5
    assert rewards.multi_answer_exact_match("Paris; Berlin; Rome", golds) == 1.0
    assert rewards.multi_answer_exact_match("Berlin; Paris", golds) == 0.0  # order matters
    assert rewards.multi_answer_exact_match(None, golds) == 0.0

  def test_single_question(self):
    assert rewards.multi_answer_exact_match("Paris", [["Paris"]]) == 1.0

  def test_no_questions_is_an_error(self):
    with pytest.raises(ValueError):
      rewards.multi_answer_exact_match("Paris", [])
