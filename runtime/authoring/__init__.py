"""What users write: @workflow and Context, Agent, the app catalogue. Above tools (a workflow names
its tools), below the machinery that runs it."""
