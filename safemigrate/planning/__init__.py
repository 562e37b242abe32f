"""Planning: autodetector rules, stage plans, the linter; imports the engine and operations, never the commands."""
