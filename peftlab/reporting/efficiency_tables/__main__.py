from peftlab.reporting.efficiency_tables.cli import main

main()
