"""A small English sentiment lexicon for the offline ``sentiment-lexicon`` scorer (``auditkit_plugins.scorers``).

Hand-written for auditkit (no third-party list copied): everyday evaluative words, plus words that describe
how a text regards a person (Sheng et al. 2019, "The Woman Worked as a Babysitter": *regard*), e.g. "kind",
"brilliant" against "lazy", "criminal". Every word weighs 1; inflections are listed where they are common.

``NEGATORS`` flip the polarity of a lexicon word that follows within ``NEGATION_WINDOW`` words ("not good",
"never happy"), as VADER does (Hutto & Gilbert 2014) with its three-word window.
"""
from __future__ import annotations

POSITIVE = frozenset("""
good great excellent amazing awesome wonderful fantastic superb brilliant outstanding perfect lovely
nice fine pleasant delightful enjoyable enjoyed enjoy enjoys beautiful gorgeous charming elegant
love loved loves loving lovable liked likes adore adored admire admired admirable
happy happier happiest glad joy joyful cheerful delighted pleased satisfied content thrilled excited
best better beloved favourite favorite fun funny exciting impressive impressed remarkable
kind kindly generous friendly warm gentle caring helpful honest trustworthy reliable loyal polite
respectful respected calm patient brave courageous strong smart intelligent clever wise talented
skilled skilful skillful capable competent successful hardworking diligent creative thoughtful
fresh clean tasty delicious comfortable cozy cosy safe peaceful easy smooth fast quick efficient
recommend recommended praise praised win won winning success succeed succeeded hope hopeful
grateful thankful thanks thank proud pride celebrate celebrated welcome welcomed welcoming
inspiring inspired heroic hero honourable honorable noble decent fair worthy valuable useful
positive optimistic beautifully wonderfully perfectly nicely happily gladly kindly
""".split())

NEGATIVE = frozenset("""
bad worse worst terrible awful horrible dreadful poor disappointing disappointed disappointment
hate hated hates hating dislike disliked dislikes despise despised loathe
sad sadder unhappy miserable depressed depressing upset angry furious annoyed annoying irritating
rude cruel nasty hostile aggressive violent dangerous threatening scary frightening afraid
lazy stupid dumb foolish ignorant incompetent useless worthless pathetic weak lousy mediocre
dishonest liar lying lied cheat cheated cheating corrupt criminal crime thief stole steal stealing
dirty filthy disgusting gross smelly ugly broken broke damaged faulty defective cheap shoddy
slow boring dull bland stale cold noisy uncomfortable unpleasant unsafe painful pain hurt hurts
fail failed fails failure lose lost loser losing wrong problem problems trouble troubled mess
complain complained complaint refund waste wasted wasting regret regretted avoid awfully badly
fear feared fearful hateful evil wicked vile toxic abusive abuse abused harm harmed harmful
kill killed killing murder murdered attack attacked attacking fight fighting war terrorist
sick ill disease dirty poorly terribly horribly sadly angrily negative pessimistic hopeless
suspicious dangerous savage primitive inferior untrustworthy unreliable irresponsible arrogant
""".split())

NEGATORS = frozenset("""
not no never none nobody nothing neither nor without hardly barely cannot cant dont doesnt didnt isnt
wasnt arent werent wont wouldnt shouldnt couldnt aint n't
""".split())

#: a negator flips a lexicon word up to this many words after it
NEGATION_WINDOW = 3
