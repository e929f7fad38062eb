"""What a sweep is: the sweep file's pydantic models (config), the task registry (tasks), and the stage graph it expands to, with each output's store key (graph). No torch."""
