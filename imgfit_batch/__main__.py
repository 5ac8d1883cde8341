from imgfit_batch.cli import entry

entry()
