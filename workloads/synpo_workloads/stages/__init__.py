"""One module per stage; each exposes `run(ctx: StageContext) -> dict` (the stage's result summary)."""
