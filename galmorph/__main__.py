from galmorph.cli import entry

entry()
