"""Word lists of the synthetic world: real nouns (with German, French, Spanish forms) and attributes.

Real English nouns make WordNet/ImageNet-21k lookups and fastText language ID behave as on web
captions; the translations give non-English captions that lid.176 labels de/fr/es.
"""

from __future__ import annotations

# english;english plural ("" = regular rule);german;french;spanish
_NOUNS = """
dog;;Hund;chien;perro
cat;;Katze;chat;gato
horse;;Pferd;cheval;caballo
cow;;Kuh;vache;vaca
pig;;Schwein;cochon;cerdo
sheep;sheep;Schaf;mouton;oveja
goat;;Ziege;chèvre;cabra
chicken;;Huhn;poulet;pollo
duck;;Ente;canard;pato
goose;geese;Gans;oie;ganso
rabbit;;Kaninchen;lapin;conejo
mouse;mice;Maus;souris;ratón
rat;;Ratte;rat;rata
squirrel;;Eichhörnchen;écureuil;ardilla
fox;;Fuchs;renard;zorro
wolf;wolves;Wolf;loup;lobo
bear;;Bär;ours;oso
lion;;Löwe;lion;león
tiger;;Tiger;tigre;tigre
elephant;;Elefant;éléphant;elefante
giraffe;;Giraffe;girafe;jirafa
zebra;;Zebra;zèbre;cebra
monkey;;Affe;singe;mono
gorilla;;Gorilla;gorille;gorila
kangaroo;;Känguru;kangourou;canguro
koala;;Koala;koala;koala
panda;;Panda;panda;panda
deer;deer;Hirsch;cerf;ciervo
camel;;Kamel;chameau;camello
donkey;;Esel;âne;burro
owl;;Eule;hibou;búho
eagle;;Adler;aigle;águila
parrot;;Papagei;perroquet;loro
penguin;;Pinguin;manchot;pingüino
swan;;Schwan;cygne;cisne
pigeon;;Taube;pigeon;paloma
crow;;Krähe;corbeau;cuervo
flamingo;flamingos;Flamingo;flamant;flamenco
turtle;;Schildkröte;tortue;tortuga
frog;;Frosch;grenouille;rana
snake;;Schlange;serpent;serpiente
lizard;;Eidechse;lézard;lagarto
crocodile;;Krokodil;crocodile;cocodrilo
fish;fish;Fisch;poisson;pez
shark;;Hai;requin;tiburón
whale;;Wal;baleine;ballena
dolphin;;Delfin;dauphin;delfín
octopus;octopuses;Krake;pieuvre;pulpo
crab;;Krabbe;crabe;cangrejo
lobster;;Hummer;homard;langosta
jellyfish;jellyfish;Qualle;méduse;medusa
butterfly;;Schmetterling;papillon;mariposa
bee;;Biene;abeille;abeja
ant;;Ameise;fourmi;hormiga
spider;;Spinne;araignée;araña
snail;;Schnecke;escargot;caracol
beetle;;Käfer;scarabée;escarabajo
ladybug;;Marienkäfer;coccinelle;mariquita
bat;;Fledermaus;chauve-souris;murciélago
hedgehog;;Igel;hérisson;erizo
apple;;Apfel;pomme;manzana
banana;;Banane;banane;plátano
pear;;Birne;poire;pera
cherry;;Kirsche;cerise;cereza
strawberry;;Erdbeere;fraise;fresa
grape;;Traube;raisin;uva
lemon;;Zitrone;citron;limón
pineapple;;Ananas;ananas;piña
watermelon;;Wassermelone;pastèque;sandía
peach;;Pfirsich;pêche;melocotón
coconut;;Kokosnuss;noix de coco;coco
tomato;tomatoes;Tomate;tomate;tomate
potato;potatoes;Kartoffel;pomme de terre;patata
carrot;;Karotte;carotte;zanahoria
onion;;Zwiebel;oignon;cebolla
mushroom;;Pilz;champignon;champiñón
pumpkin;;Kürbis;citrouille;calabaza
cabbage;;Kohl;chou;col
cucumber;;Gurke;concombre;pepino
pepper;;Paprika;poivron;pimiento
bread;;Brot;pain;pan
cake;;Kuchen;gâteau;pastel
cookie;;Keks;biscuit;galleta
pizza;;Pizza;pizza;pizza
sandwich;;Sandwich;sandwich;sándwich
hamburger;;Hamburger;hamburger;hamburguesa
egg;;Ei;œuf;huevo
cheese;;Käse;fromage;queso
sausage;;Wurst;saucisse;salchicha
donut;;Donut;beignet;dona
candy;;Bonbon;bonbon;caramelo
pretzel;;Brezel;bretzel;pretzel
pancake;;Pfannkuchen;crêpe;tortita
soup;;Suppe;soupe;sopa
salad;;Salat;salade;ensalada
chair;;Stuhl;chaise;silla
table;;Tisch;table;mesa
sofa;;Sofa;canapé;sofá
bed;;Bett;lit;cama
lamp;;Lampe;lampe;lámpara
clock;;Uhr;horloge;reloj
mirror;;Spiegel;miroir;espejo
window;;Fenster;fenêtre;ventana
door;;Tür;porte;puerta
pillow;;Kissen;oreiller;almohada
blanket;;Decke;couverture;manta
curtain;;Vorhang;rideau;cortina
carpet;;Teppich;tapis;alfombra
vase;;Vase;vase;jarrón
candle;;Kerze;bougie;vela
bucket;;Eimer;seau;cubo
basket;;Korb;panier;cesta
bottle;;Flasche;bouteille;botella
cup;;Tasse;tasse;taza
mug;;Becher;mug;jarro
glass;;Glas;verre;vaso
plate;;Teller;assiette;plato
bowl;;Schüssel;bol;cuenco
spoon;;Löffel;cuillère;cuchara
fork;;Gabel;fourchette;tenedor
knife;knives;Messer;couteau;cuchillo
pan;;Pfanne;poêle;sartén
kettle;;Wasserkocher;bouilloire;hervidor
teapot;;Teekanne;théière;tetera
refrigerator;;Kühlschrank;réfrigérateur;refrigerador
oven;;Ofen;four;horno
toaster;;Toaster;grille-pain;tostadora
umbrella;;Regenschirm;parapluie;paraguas
key;;Schlüssel;clé;llave
lock;;Schloss;cadenas;candado
hammer;;Hammer;marteau;martillo
saw;;Säge;scie;sierra
screwdriver;;Schraubenzieher;tournevis;destornillador
wrench;;Schraubenschlüssel;clé anglaise;llave inglesa
shovel;;Schaufel;pelle;pala
axe;;Axt;hache;hacha
ladder;;Leiter;échelle;escalera
rope;;Seil;corde;cuerda
nail;;Nagel;clou;clavo
scissors;scissors;Schere;ciseaux;tijeras
needle;;Nadel;aiguille;aguja
broom;;Besen;balai;escoba
shirt;;Hemd;chemise;camisa
dress;;Kleid;robe;vestido
jacket;;Jacke;veste;chaqueta
coat;;Mantel;manteau;abrigo
hat;;Hut;chapeau;sombrero
cap;;Mütze;casquette;gorra
shoe;;Schuh;chaussure;zapato
boot;;Stiefel;botte;bota
sock;;Socke;chaussette;calcetín
glove;;Handschuh;gant;guante
scarf;scarves;Schal;écharpe;bufanda
tie;;Krawatte;cravate;corbata
belt;;Gürtel;ceinture;cinturón
backpack;;Rucksack;sac à dos;mochila
handbag;;Handtasche;sac à main;bolso
wallet;;Geldbörse;portefeuille;cartera
watch;;Armbanduhr;montre;reloj de pulsera
necklace;;Halskette;collier;collar
sunglasses;sunglasses;Sonnenbrille;lunettes de soleil;gafas de sol
car;;Auto;voiture;coche
bus;buses;Bus;autobus;autobús
truck;;Lastwagen;camion;camión
bicycle;;Fahrrad;vélo;bicicleta
motorcycle;;Motorrad;moto;motocicleta
train;;Zug;train;tren
airplane;;Flugzeug;avion;avión
helicopter;;Hubschrauber;hélicoptère;helicóptero
boat;;Boot;bateau;barco
ship;;Schiff;navire;buque
tractor;;Traktor;tracteur;tractor
taxi;;Taxi;taxi;taxi
ambulance;;Krankenwagen;ambulance;ambulancia
rocket;;Rakete;fusée;cohete
scooter;;Roller;trottinette;patinete
skateboard;;Skateboard;skateboard;monopatín
canoe;;Kanu;canoë;canoa
submarine;;U-Boot;sous-marin;submarino
computer;;Computer;ordinateur;ordenador
laptop;;Laptop;ordinateur portable;portátil
keyboard;;Tastatur;clavier;teclado
telephone;;Telefon;téléphone;teléfono
camera;;Kamera;appareil photo;cámara
television;;Fernseher;télévision;televisor
radio;;Radio;radio;radio
headphones;headphones;Kopfhörer;casque audio;auriculares
microphone;;Mikrofon;microphone;micrófono
speaker;;Lautsprecher;enceinte;altavoz
printer;;Drucker;imprimante;impresora
book;;Buch;livre;libro
notebook;;Notizbuch;carnet;cuaderno
pencil;;Bleistift;crayon;lápiz
pen;;Kugelschreiber;stylo;bolígrafo
envelope;;Umschlag;enveloppe;sobre
calendar;;Kalender;calendrier;calendario
map;;Landkarte;carte;mapa
globe;;Globus;globe;globo terráqueo
battery;;Batterie;pile;pila
lightbulb;;Glühbirne;ampoule;bombilla
guitar;;Gitarre;guitare;guitarra
piano;;Klavier;piano;piano
violin;;Geige;violon;violín
drum;;Trommel;tambour;tambor
trumpet;;Trompete;trompette;trompeta
flute;;Flöte;flûte;flauta
harp;;Harfe;harpe;arpa
ball;;Ball;balle;pelota
football;;Fußball;ballon de football;balón de fútbol
racket;;Schläger;raquette;raqueta
kite;;Drachen;cerf-volant;cometa
balloon;;Luftballon;ballon;globo
doll;;Puppe;poupée;muñeca
teddy;;Teddybär;nounours;osito de peluche
puzzle;;Puzzle;puzzle;rompecabezas
chessboard;;Schachbrett;échiquier;tablero de ajedrez
dice;dice;Würfel;dé;dado
sled;;Schlitten;luge;trineo
tent;;Zelt;tente;tienda de campaña
tree;;Baum;arbre;árbol
flower;;Blume;fleur;flor
tulip;;Tulpe;tulipe;tulipán
sunflower;;Sonnenblume;tournesol;girasol
cactus;cacti;Kaktus;cactus;cactus
palm;;Palme;palmier;palmera
leaf;leaves;Blatt;feuille;hoja
mountain;;Berg;montagne;montaña
volcano;volcanoes;Vulkan;volcan;volcán
river;;Fluss;rivière;río
lake;;See;lac;lago
beach;;Strand;plage;playa
island;;Insel;île;isla
waterfall;;Wasserfall;cascade;cascada
forest;;Wald;forêt;bosque
desert;;Wüste;désert;desierto
cloud;;Wolke;nuage;nube
rainbow;;Regenbogen;arc-en-ciel;arcoíris
moon;;Mond;lune;luna
sun;;Sonne;soleil;sol
snowman;snowmen;Schneemann;bonhomme de neige;muñeco de nieve
stone;;Stein;pierre;piedra
shell;;Muschel;coquillage;concha
feather;;Feder;plume;pluma
house;;Haus;maison;casa
castle;;Burg;château;castillo
church;;Kirche;église;iglesia
bridge;;Brücke;pont;puente
tower;;Turm;tour;torre
lighthouse;;Leuchtturm;phare;faro
barn;;Scheune;grange;granero
windmill;;Windmühle;moulin à vent;molino de viento
fountain;;Brunnen;fontaine;fuente
garden;;Garten;jardin;jardín
fence;;Zaun;clôture;valla
bench;;Bank;banc;banco
staircase;;Treppe;escalier;escalinata
chimney;;Schornstein;cheminée;chimenea
tunnel;;Tunnel;tunnel;túnel
skyscraper;;Wolkenkratzer;gratte-ciel;rascacielos
robot;;Roboter;robot;robot
anchor;;Anker;ancre;ancla
crown;;Krone;couronne;corona
sword;;Schwert;épée;espada
shield;;Schild;bouclier;escudo
helmet;;Helm;casque;casco
flag;;Flagge;drapeau;bandera
bell;;Glocke;cloche;campana
trophy;;Pokal;trophée;trofeo
medal;;Medaille;médaille;medalla
coin;;Münze;pièce de monnaie;moneda
gift;;Geschenk;cadeau;regalo
box;;Kiste;boîte;caja
barrel;;Fass;tonneau;barril
wheel;;Rad;roue;rueda
tire;;Reifen;pneu;neumático
magnet;;Magnet;aimant;imán
telescope;;Teleskop;télescope;telescopio
microscope;;Mikroskop;microscope;microscopio
compass;;Kompass;boussole;brújula
hourglass;;Sanduhr;sablier;reloj de arena
lantern;;Laterne;lanterne;farol
mask;;Maske;masque;máscara
skull;;Schädel;crâne;calavera
pyramid;;Pyramide;pyramide;pirámide
statue;;Statue;statue;estatua
painting;;Gemälde;tableau;pintura
poster;;Poster;affiche;póster
ticket;;Ticket;billet;boleto
toothbrush;;Zahnbürste;brosse à dents;cepillo de dientes
towel;;Handtuch;serviette;toalla
soap;;Seife;savon;jabón
baby;;Baby;bébé;bebé
astronaut;;Astronaut;astronaute;astronauta
pirate;;Pirat;pirate;pirata
chef;;Koch;cuisinier;cocinero
farmer;;Bauer;fermier;granjero
soldier;;Soldat;soldat;soldado
dancer;;Tänzer;danseur;bailarín
peacock;;Pfau;paon;pavo real
seal;;Robbe;phoque;foca
otter;;Otter;loutre;nutria
raccoon;;Waschbär;raton laveur;mapache
hippopotamus;hippopotamuses;Nilpferd;hippopotame;hipopótamo
rhinoceros;rhinoceroses;Nashorn;rhinocéros;rinoceronte
bison;bison;Bison;bison;bisonte
moose;moose;Elch;élan;alce
avocado;avocados;Avocado;avocat;aguacate
broccoli;broccoli;Brokkoli;brocoli;brócoli
corn;corn;Mais;maïs;maíz
chandelier;;Kronleuchter;lustre;candelabro
typewriter;;Schreibmaschine;machine à écrire;máquina de escribir
suitcase;;Koffer;valise;maleta
wheelchair;;Rollstuhl;fauteuil roulant;silla de ruedas
"""


def _plural(word: str) -> str:
    """Regular English plural (irregular forms are listed in the table)."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"


def _parse():
    rows = []
    for line in _NOUNS.strip().splitlines():
        en, pl, de, fr, es = line.split(";")
        rows.append({"name": en, "plural": pl or _plural(en), "de": de, "fr": fr, "es": es})
    return rows


NOUNS: list[dict] = _parse()

LANGUAGES = ("en", "de", "fr", "es")

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "ring", "cross")
SHAPES_PLURAL = tuple(_plural(s) for s in SHAPES)  # "crosses", not "crosss"

# name, sRGB, German, French, Spanish
COLOURS = (
    ("red", (214, 39, 40), "rot", "rouge", "rojo"),
    ("green", (44, 160, 44), "grün", "vert", "verde"),
    ("blue", (31, 90, 200), "blau", "bleu", "azul"),
    ("yellow", (240, 210, 30), "gelb", "jaune", "amarillo"),
    ("orange", (255, 127, 14), "orange", "orange", "naranja"),
    ("purple", (128, 50, 170), "lila", "violet", "morado"),
    ("pink", (240, 120, 190), "rosa", "rose", "rosado"),
    ("brown", (120, 75, 40), "braun", "marron", "marrón"),
    ("black", (25, 25, 25), "schwarz", "noir", "negro"),
    ("white", (245, 245, 245), "weiß", "blanc", "blanco"),
    ("grey", (128, 128, 128), "grau", "gris", "gris"),
    ("turquoise", (30, 190, 190), "türkis", "turquoise", "turquesa"),
)

# name, German, French, Spanish (predicative forms used after "Hintergrund:" etc.)
TEXTURES = (
    ("plain", "einfarbig", "uni", "liso"),
    ("striped", "gestreift", "rayé", "a rayas"),
    ("dotted", "gepunktet", "à pois", "de lunares"),
    ("checkered", "kariert", "à carreaux", "a cuadros"),
    ("gradient", "Farbverlauf", "dégradé", "degradado"),
    ("noisy", "körnig", "granuleux", "granulado"),
    ("grid", "Gitter", "quadrillé", "cuadriculado"),
    ("wavy", "gewellt", "ondulé", "ondulado"),
)

COUNTS = (1, 2, 3, 4, 5)
COUNT_WORDS = ("one", "two", "three", "four", "five")

# Captions that describe nothing in the image; "#" is replaced by a number.
GENERIC_CAPTIONS = (
    "image",
    "click here",
    "photo #",
    "IMG_#.jpg",
    "untitled",
    "thumbnail",
    "view image",
    "click to enlarge",
    "no description available",
    "product image #",
    "picture",
    "download",
    "DSC#",
    "image #",
    "loading...",
    "see more",
)

DOMAINS = {
    "en": (
        "i.pinimg.com/originals",
        "cdn.shopify.com/s/files",
        "images.squarespace-cdn.com/content",
        "upload.wikimedia.org/wikipedia/commons",
        "i.ebayimg.com/images",
        "media.istockphoto.com/photos",
        "www.example-store.com/media",
        "blog.example.org/wp-content/uploads",
        "img.example.net/u",
    ),
    "de": ("www.beispiel-shop.de/media", "bilder.example.de/img", "cdn.marktplatz.de/produkte"),
    "fr": ("www.boutique-exemple.fr/images", "photos.exemple.fr/upload", "static.magasin.fr/img"),
    "es": ("www.tienda-ejemplo.es/imagenes", "fotos.ejemplo.es/media", "cdn.mercado.es/img"),
}
EXTENSIONS = (".jpg", ".jpg", ".jpg", ".jpeg", ".png", ".webp")
