(function(){
// The index's plate list: rows from the JSON in #plate-data, filtered, sorted and shown a page at a time.
var data=document.getElementById('plate-data'),body=document.querySelector('#plate-index tbody'),bar=document.getElementById('plate-tools');
if(!data||!body||!bar)return;
var rows=JSON.parse(data.textContent),cols=JSON.parse(data.getAttribute('data-columns')),shown=100,key=-1,dir=1;
var q=document.createElement('input');q.type='search';q.id='plate-filter';q.size=36;
q.placeholder='Filter plates (name, date, donor, lot, QC, flag)';bar.appendChild(q);
var count=document.createElement('span');count.className='muted';count.id='plate-count';bar.appendChild(count);
var more=document.createElement('button');more.type='button';more.id='plate-more';more.textContent='Show more';bar.appendChild(more);
function cell(r,i){var td=document.createElement('td');var v=r[i];
 if(cols[i]==='plate'){var a=document.createElement('a');a.href=r[1];a.textContent=v;td.appendChild(a);}
 else if(cols[i]==='qc'){var b=document.createElement('span');b.className='badge '+v;b.textContent=v;td.appendChild(b);}
 else{td.textContent=v;}
 return td;}
function draw(){var s=q.value.toLowerCase(),list=rows.filter(function(r){return s===''||r.join(' ').toLowerCase().indexOf(s)>=0;});
 if(key>=0){list=list.slice().sort(function(a,b){return (a[key]<b[key]?-1:a[key]>b[key]?1:0)*dir;});}
 body.textContent='';list.slice(0,shown).forEach(function(r){var tr=document.createElement('tr');tr.setAttribute('data-plate',r[0]);
  for(var i=0;i<cols.length;i++){if(cols[i]!=='page')tr.appendChild(cell(r,i));}body.appendChild(tr);});
 count.textContent=Math.min(shown,list.length)+' of '+list.length+' plate(s) shown';more.hidden=list.length<=shown;}
q.oninput=function(){shown=100;draw();};more.onclick=function(){shown+=500;draw();};
document.querySelectorAll('#plate-index thead th').forEach(function(th,j){th.style.cursor='pointer';th.title='Sort';
 th.onclick=function(){var i=j+(j>=1?1:0);dir=(key===i)?-dir:1;key=i;draw();};});
window.addEventListener('beforeprint',function(){shown=rows.length;draw();});
draw();
})();
