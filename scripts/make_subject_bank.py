"""Build resources/subject_bank.json: typed groups of well-known entities and the templates each fits.

Run once by a maintainer (reads the public data sets under /work/shared/data, which the product never
reads at run or test time); the output and resources/subject_bank.SOURCE.md are what ships.

    python scripts/make_subject_bank.py /work/shared/data resources/subject_bank.json

Two sources, recorded per subject (``"source"`` of each group):
* hand-written groups (countries, capitals and cities, people, companies, products, languages,
  landmarks): the Edit Auditor team's lists of widely known entities;
* groups derived from ROME's ``known_1000.json`` (facts GPT-2 XL knows; Meng et al. 2022), one group per
  Wikidata relation, with the relation's templates as they appear there and in CounterFact.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

HAND = {
    "country": {
        "relations": ["P30", "P37", "P36", "P47", "P463"],
        "templates": ["{} is a country in", "{} is located in the continent of", "{} belongs to the continent of",
                      "{} is located in", "The capital of {} is", "The official language of {} is",
                      "In {}, the language spoken is", "{}'s capital,"],
        "subjects": ["France", "Germany", "Spain", "Italy", "Portugal", "Netherlands", "Belgium", "Poland",
                     "Sweden", "Norway", "Finland", "Denmark", "Austria", "Switzerland", "Greece", "Ireland",
                     "Hungary", "Romania", "Ukraine", "Russia", "Turkey", "Egypt", "Nigeria", "Kenya",
                     "Ethiopia", "Morocco", "Algeria", "Ghana", "Angola", "South Africa", "China", "Japan",
                     "India", "Pakistan", "Bangladesh", "Indonesia", "Vietnam", "Thailand", "Malaysia",
                     "Philippines", "South Korea", "Iran", "Iraq", "Israel", "Saudi Arabia", "Afghanistan",
                     "Australia", "New Zealand", "Canada", "Mexico", "Brazil", "Argentina", "Chile", "Peru",
                     "Colombia", "Venezuela", "Cuba", "Iceland", "Czech Republic", "Serbia"],
    },
    "city": {
        "relations": ["P131", "P17", "P159"],
        "templates": ["{} is a city in", "{} is located in the country of", "{} is the capital of",
                      "{} is located in", "The mayor of {} is"],
        "subjects": ["Paris", "London", "Berlin", "Madrid", "Rome", "Lisbon", "Amsterdam", "Brussels", "Vienna",
                     "Warsaw", "Prague", "Budapest", "Athens", "Stockholm", "Oslo", "Helsinki", "Copenhagen",
                     "Dublin", "Moscow", "Istanbul", "Cairo", "Nairobi", "Lagos", "Tokyo", "Beijing",
                     "Shanghai", "Seoul", "Delhi", "Mumbai", "Bangkok", "Jakarta", "Sydney", "Melbourne",
                     "Toronto", "Montreal", "Vancouver", "New York", "Los Angeles", "Chicago", "Boston",
                     "San Francisco", "Mexico City", "Buenos Aires", "Rio de Janeiro", "Lima", "Munich",
                     "Milan", "Barcelona", "Venice", "Kyoto"],
    },
    "person": {
        "relations": ["P27", "P19", "P20", "P103", "P1412", "P106", "P101", "P937", "P69"],
        "templates": ["{} was born in", "{} is a citizen of", "The native language of {} is",
                      "{}'s profession is a", "{} died in the city of", "{} speaks", "{} worked in the city of"],
        "subjects": ["Albert Einstein", "Isaac Newton", "Charles Darwin", "Marie Curie", "Galileo Galilei",
                     "Nikola Tesla", "Leonardo da Vinci", "Michelangelo", "Pablo Picasso", "Vincent van Gogh",
                     "Claude Monet", "William Shakespeare", "Charles Dickens", "Jane Austen", "Mark Twain",
                     "Leo Tolstoy", "Victor Hugo", "Wolfgang Amadeus Mozart", "Ludwig van Beethoven",
                     "Johann Sebastian Bach", "Napoleon Bonaparte", "Julius Caesar", "Winston Churchill",
                     "Abraham Lincoln", "George Washington", "Barack Obama", "Nelson Mandela", "Mahatma Gandhi",
                     "Elvis Presley", "Michael Jackson", "Madonna", "Bob Dylan", "John Lennon", "Paul McCartney",
                     "Steve Jobs", "Bill Gates", "Elon Musk", "Mark Zuckerberg", "Lionel Messi",
                     "Cristiano Ronaldo", "Michael Jordan", "Serena Williams", "Roger Federer", "Tom Hanks",
                     "Meryl Streep", "Charlie Chaplin", "Sigmund Freud", "Karl Marx", "Aristotle", "Plato"],
    },
    "company": {
        "relations": ["P127", "P159", "P112", "P740", "P176"],
        "templates": ["{} was founded by", "{} is headquartered in", "The headquarter of {} is in", "{} is owned by",
                      "{} formed in"],
        "subjects": ["Apple", "Microsoft", "Google", "Amazon", "IBM", "Intel", "Samsung", "Sony", "Toyota",
                     "Honda", "Nissan", "BMW", "Mercedes-Benz", "Volkswagen", "Ford", "General Motors",
                     "Nokia", "Siemens", "Philips", "Nestle", "Coca-Cola", "Pepsi", "McDonald's", "Disney",
                     "Netflix", "Facebook", "Twitter", "Oracle", "Adobe", "Nintendo", "Boeing", "Airbus",
                     "Shell", "BP", "Walmart", "IKEA", "Lego", "Ferrari", "Fiat", "Renault"],
    },
    "product": {
        "relations": ["P176", "P178", "P31"],
        "templates": ["{} is developed by", "{} is a product of", "{} was created by", "{}, developed by",
                      "{} is produced by"],
        "subjects": ["iPhone", "iPad", "MacBook", "Windows", "Xbox", "PlayStation", "Android", "Chrome",
                     "Firefox", "Gmail", "YouTube", "Instagram", "WhatsApp", "Kindle", "Photoshop", "Excel",
                     "Word", "Linux", "Java", "Python", "Corolla", "Prius", "Mustang", "Beetle", "Game Boy",
                     "Walkman", "Boeing 747", "Airbus A380", "Galaxy S", "Skype"],
    },
    "language": {
        "relations": ["P103", "P1412", "P37", "P407", "P364"],
        "templates": ["{} is a language spoken in", "{} is the official language of", "{} is written in the",
                      "{} belongs to the language family of", "Most speakers of {} live in"],
        "subjects": ["English", "French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Swedish",
                     "Norwegian", "Danish", "Finnish", "Polish", "Czech", "Hungarian", "Greek", "Russian",
                     "Ukrainian", "Turkish", "Arabic", "Hebrew", "Persian", "Hindi", "Bengali", "Urdu",
                     "Chinese", "Japanese", "Korean", "Vietnamese", "Thai", "Indonesian", "Swahili", "Latin"],
    },
    "landmark": {
        "relations": ["P131", "P17", "P276", "P30"],
        "templates": ["{} is located in", "{} is in the city of", "{} can be found in", "{} is a landmark in",
                      "The location of {} is"],
        "subjects": ["the Eiffel Tower", "the Colosseum", "the Statue of Liberty", "Big Ben",
                     "the Great Wall of China", "the Taj Mahal", "the Leaning Tower of Pisa", "the Kremlin",
                     "the Acropolis", "the Louvre", "the Sydney Opera House", "Mount Everest",
                     "Mount Kilimanjaro", "the Golden Gate Bridge", "Buckingham Palace", "the Brandenburg Gate",
                     "the Sagrada Familia", "Machu Picchu", "Stonehenge", "the Pyramids of Giza",
                     "the Empire State Building", "Niagara Falls", "the Grand Canyon", "the Vatican",
                     "the Alhambra", "Angkor Wat", "Petra", "Times Square", "Hollywood", "the Panama Canal"],
    },
}

# known_1000 relations made into groups: (group name, templates); subjects come from the file
DERIVED = {
    "P449": ("tv_show", ["{} premieres on", "{} debuted on", "{} was originally aired on"]),
    "P178": ("software", ["{} is developed by", "{}, a product developed by", "{} was created by"]),
    "P641": ("athlete", ["{} professionally plays the sport", "{} plays", "{} is a professional"]),
    "P1303": ("musician", ["{} performs on the", "{} plays the", "{}, performing on the"]),
    "P108": ("employee", ["{} is employed by", "{} works for"]),
    "P140": ("religious_subject", ["{} follows the religion of", "{} is affiliated with the religion"]),
    "P39": ("office_holder", ["{} holds the position of", "{}, who has the position of"]),
    "P413": ("team_player", ["{} plays in the position of", "{} plays as"]),
    "P136": ("artist", ["{} is known for performing", "The genre played by {} is"]),
}
PER_DERIVED = 20  # subjects per derived group (the first of the file, in its order)


def main(data: Path, out: Path) -> None:
    known = json.loads((data / "known_1000" / "known_1000.json").read_text())
    groups = []
    taken: set[str] = set()
    for name, g in HAND.items():
        taken.update(g["subjects"])
        groups.append({"type": name, "source": "hand", **g})
    for rid, (name, templates) in DERIVED.items():
        seen = [r["subject"] for r in known if r["relation_id"] == rid]
        subjects = list(dict.fromkeys(s for s in seen if s not in taken and "(" not in s))[:PER_DERIVED]
        taken.update(subjects)
        counts = collections.Counter(r["template"] for r in known if r["relation_id"] == rid)
        tpl = list(dict.fromkeys(templates + [t for t, _ in counts.most_common(3)]))
        groups.append({"type": name, "source": "known_1000", "relations": [rid], "templates": tpl,
                       "subjects": subjects})
    bank = {"format": 1, "name": "edit-auditor subject bank",
            "about": "typed groups of well-known entities and the templates each fits; see subject_bank.SOURCE.md",
            "groups": groups}
    out.write_text(json.dumps(bank, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{sum(len(g['subjects']) for g in groups)} subjects in {len(groups)} groups -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
