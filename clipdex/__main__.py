from clipdex.cli import main

main(prog_name="clipdex")
