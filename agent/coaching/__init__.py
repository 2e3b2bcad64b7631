"""Coaching: the console-text classifier, nudge mapping and the scripted coach.

    classify(text, context=None) -> Command | ClassifiedCorrection | Reply   (agent.coaching.classify)
    nudge_to_action_offset(correction) -> float32[5]                          (agent.coaching.nudge)
    ScriptedCoach(seed, delay_steps, error_rate, intended)                    (agent.coaching.scripted)
"""
