"""The export tasks `from_pretrained` accepts for a Hugging Face model (Optimum's task names).

Kept apart from compressor.py so that the command line can list them without importing it.
"""

EXPORT_TASKS = ("feature-extraction", "text-classification", "token-classification", "question-answering",
                "fill-mask", "text-generation-with-past", "text2text-generation-with-past")
