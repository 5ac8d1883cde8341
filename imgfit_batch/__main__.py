from imgfit_batch.cli import main

main()
