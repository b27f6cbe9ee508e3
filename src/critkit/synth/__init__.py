"""Synthesis: the stages that fill records in (respond: the student's own answers; critique:
the teacher's critique and verdict; refine: the teacher's refined answer; solve: the teacher's
own solution), the offline reference teacher, the durable job runner behind the stage commands
(journal, resume, retries, rate limits, shards, accounting), and statistics of a synthesized set."""
