from slurmctl.cli import main

main()
