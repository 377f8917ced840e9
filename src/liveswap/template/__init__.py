"""The template: a warm process that forks workers (``process``), and the supervisor's side of it
(``spawner``)."""
