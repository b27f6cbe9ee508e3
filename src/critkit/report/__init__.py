"""Reports: tables (markdown, CSV) and charts of what evaluation measured, for one run, several
seeds or several runs, with paired differences from the base model and their intervals."""
